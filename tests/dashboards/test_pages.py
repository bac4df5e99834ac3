"""Page callbacks called directly (no browser): click decoding, refresh skipping, drill-down query checks."""

from __future__ import annotations

import sys

import pytest

dash = pytest.importorskip("dash")

from dash.exceptions import PreventUpdate  # noqa: E402

from dashboards.app import create_app  # noqa: E402
from opdwatch.errors import OpdwatchError  # noqa: E402


@pytest.fixture()
def app(runs_root, run_writer):
    run_writer(runs_root / "r", collapse_at=3).steps(6)
    return create_app(runs_root)


def page(name: str):
    return sys.modules[f"pages.{name}"]  # Dash executes the page files as modules "pages.<name>"


def test_clicked_step_reads_customdata_then_x(app):
    clicked = page("run").clicked_step
    assert clicked({"points": [{"x": 3, "customdata": [7]}]}) == 7
    assert clicked({"points": [{"x": 3}]}) == 3
    assert clicked({"points": [{"x": "a"}]}) is None
    assert clicked(None) is None and clicked({"points": []}) is None


def test_refresh_sends_figures_once_per_version(app, runs_root, run_writer):
    run = page("run")
    with app.server.test_request_context():
        out = run.refresh(0, "r", None)
        figures, version = out[: len(run.GRAPH_IDS)], out[-1]
        assert [len(f.data[0].x) for f in figures[:1]] == [6]
        with pytest.raises(PreventUpdate):  # nothing new: nothing is rebuilt or sent
            run.refresh(1, "r", version)
        with pytest.raises(PreventUpdate):  # a run that vanished or was never there keeps the screen as is
            run.refresh(1, "../elsewhere", None)


def test_drill_down_query_is_checked(app):
    parse = page("tokens")._parse
    assert parse("3", None, "0", "2", None) == {"step": 3, "phase": "train", "rank": 0, "rollout": 2,
                                                "order": "length"}
    for bad in (("x", None, None, None, None), (None, "test", None, None, None), (None, None, None, None, "up")):
        with pytest.raises(OpdwatchError):
            parse(*bad)


def test_tokens_layout_refuses_outside_names(app):
    with app.server.test_request_context():
        layout = page("tokens").layout(run="../r")
    assert layout.id == "tokens-refused"
