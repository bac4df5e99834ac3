"""Page callbacks called directly (no browser): click decoding, refresh skipping, drill-down query checks."""

from __future__ import annotations

import sys

import pytest

dash = pytest.importorskip("dash")

from dash.exceptions import PreventUpdate  # noqa: E402

from opdwatch.dashboards.app import create_app  # noqa: E402
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


def test_clicked_step_keeps_big_steps_and_refuses_what_is_not_a_step(app):
    clicked = page("run").clicked_step
    assert clicked({"points": [{"x": 3, "customdata": [10**15]}]}) == 10**15
    assert clicked({"points": [{"x": 1e15}]}) == 10**15  # a JSON number may arrive as a float
    assert clicked({"points": [{"x": "1000000000000000"}]}) == 10**15
    for bad in (2.5, True, 2**60, float("inf"), float("nan"), [1], {"a": 1}, " "):
        assert clicked({"points": [{"x": bad}]}) is None, bad
    for bad in (5, "x", [1], {"points": 3}, {"points": [3]}, {"points": [[1]]}):
        assert clicked(bad) is None, bad


def test_click_on_a_drawn_big_step_gives_that_step(app):
    """The whole path: a figure of a step beyond int32, as the browser gets it, clicked."""
    import json

    import polars as pl
    from dash._utils import to_json

    from opdwatch.plots import fig_logprobs_length

    frame = pl.DataFrame({"step": [1, 10**15], "token/student_logp_mean": [-1.0, -2.0]})
    sent = json.loads(to_json(fig_logprobs_length({"r": frame})))["data"][0]
    point = {"x": sent["x"][1], "customdata": sent["customdata"][1]}
    assert page("run").clicked_step({"points": [point]}) == 10**15


def test_repeated_query_keys_are_refused_in_one_line(app):
    with app.server.test_request_context():
        layout = page("tokens").layout(run="r", step=["1", "2"])
        assert layout.id == "tokens-refused"
        assert "step is given 2 times" in str(layout.children[1].children)
        assert page("run").layout(run=["r", "r"]).id == "run-refused"


def _text(component) -> str:
    """All the text of a Dash component tree."""
    if component is None:
        return ""
    if isinstance(component, (str, int, float)):
        return str(component)
    if isinstance(component, (list, tuple)):
        return " ".join(_text(c) for c in component)
    return _text(getattr(component, "children", None))


def test_run_list_and_page_tell_verdict_and_detector_as_one_story(runs_root):
    """A collapse with partial recovery: the list shows the verdict that names it next to the detector,
    with a note when the two differ in kind; the run page lists the episode."""
    from opdwatch.verdict import detector_story, verdict
    from tests.synthetic_runs import recorded_case

    _, case = recorded_case(runs_root, "partial", 3)
    app = create_app(runs_root)
    with app.server.test_request_context():
        runs = page("runs")
        reg = runs.registry()
        row = runs.run_row(reg, "partial-3")
        cell, level = _text(row[3]), _text(row[4])
        assert cell.startswith(case.label) and "inflating" not in cell
        watched = reg.get("partial-3", tick=False)
        first_warning, first_alarm = runs.detector_history(watched)
        train = watched.live.steps("train").collect()
        story, differ = detector_story(verdict(train), level, first_warning=first_warning, first_alarm=first_alarm)
        assert (story in cell) == differ
        meta = _text(page("run").meta(watched))
        assert f"verdict: {case.label}" in meta and "collapse episodes: collapse steps" in meta
        assert (story in _text(page("run").detector(watched))) == differ
