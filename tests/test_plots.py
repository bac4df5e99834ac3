"""The shared plot API: figures of recorded runs, overlaid, with step customdata, onsets and events."""

from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go
import polars as pl
import pytest

from opdwatch import plots
from opdwatch.drilldown import first_repetitive_rollouts, rollout_tokens
from opdwatch.reader import open_run
from opdwatch.series import length_distribution, step_series
from tests.synthetic_runs import make_run

STEP_FIGURES = (plots.fig_truncation_repetition, plots.fig_logprobs_length, plots.fig_repetitive_advantage,
                plots.fig_synchronised_spikes)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("plots")
    return {"OPD": make_run(base / "opd", steps=20, collapse_at=10, seed=0),
            "Stable-OPD": make_run(base / "stable", steps=20, seed=1)}


@pytest.fixture(scope="module")
def series(runs: dict[str, Path]) -> dict[str, pl.DataFrame]:
    return {label: step_series(open_run(path)) for label, path in runs.items()}


@pytest.mark.parametrize("fn", STEP_FIGURES)
def test_step_figures_overlay_runs_with_clickable_steps(fn, runs, series) -> None:
    events = {label: open_run(path).events() for label, path in runs.items()}
    fig = fn(series, events=events, onsets={"OPD": 10, "Stable-OPD": None})
    assert isinstance(fig, go.Figure)
    names = {t.name for t in fig.data}
    assert any(n.startswith("OPD") for n in names) and any(n.startswith("Stable-OPD") for n in names)
    for trace in fig.data:
        steps = [c[0] for c in trace.customdata]
        assert list(trace.x) == steps  # a click's customdata[0] is the step on the x axis
        assert set(steps) <= set(series["OPD"]["step"].to_list())
    xs = [shape.x0 for shape in fig.layout.shapes]
    assert 10 in xs  # the onset line
    assert 9 in xs and 11 in xs  # the warning and the alarm of the synthetic run
    hovers = [a.hovertext for a in fig.layout.annotations if a.hovertext]
    assert any("&lt;script&gt;" in h for h in hovers) and not any("<script>" in h for h in hovers)


def test_fig2_plots_the_validation_series(series) -> None:
    fig = plots.fig_truncation_repetition(series)
    val = [t for t in fig.data if t.yaxis == "y2" and t.name == "OPD"][0]
    expected = series["OPD"].drop_nulls("val/rollout/truncation_rate")
    assert list(val.x) == expected["step"].to_list()
    assert list(val.y) == expected["val/rollout/truncation_rate"].to_list()


def test_figures_accept_empty_and_partial_frames() -> None:
    empty = pl.DataFrame({"step": pl.Series([], dtype=pl.Int64)})
    for fn in STEP_FIGURES:
        assert isinstance(fn({"empty": empty}), go.Figure)
    assert isinstance(plots.fig_length_distribution(pl.DataFrame({"step": [], "num_tokens": []})), go.Figure)


def test_length_distribution_counts_every_rollout(runs) -> None:
    lengths = length_distribution(open_run(runs["OPD"]))
    fig = plots.fig_length_distribution(lengths)
    heat = next(t for t in fig.data if isinstance(t, go.Heatmap))
    assert sum(sum(row) for row in heat.z) == lengths.height
    assert list(heat.x) == sorted(lengths["step"].unique().to_list())


def test_token_view_colours_by_advantage_and_marks_repetitive(runs) -> None:
    run = open_run(runs["OPD"])
    row = first_repetitive_rollouts(run, n=1).row(0, named=True)
    tokens = rollout_tokens(run, step=row["step"], rollout=row["rollout"], rank=row["rank"])
    assert "".join(tokens["text"].to_list()) == row["text"]
    fig = plots.fig_token_view(tokens, title="<b>first</b>")
    bar = fig.data[0]
    assert len(bar.x) == tokens.height
    assert list(bar.marker.color) == pytest.approx(tokens["advantage"].to_list())
    rep = (tokens["rep_tail"] | tokens["rep_ngram"]).to_list()
    assert [w > 0 for w in bar.marker.line.width] == [r or e for r, e in zip(rep, tokens["eos"].to_list(),
                                                                               strict=True)]
    assert "&lt;b&gt;first" in fig.layout.title.text


def test_token_view_escapes_generated_markup() -> None:
    tokens = pl.DataFrame({"position": [0, 1, 2], "text": ["<img src=x onerror=alert(1)>", "\n", "a"],
                           "advantage": [0.5, -0.5, None], "rep_tail": [False, True, True],
                           "rep_ngram": [False, False, False], "eos": [False, False, False]})
    fig = plots.fig_token_view(tokens)
    assert fig.data[0].text[0].startswith("&lt;img")
    assert fig.data[0].y[2] == 1  # the newline token ends the first line
    with pytest.raises(ValueError, match="lack columns"):
        plots.fig_token_view(tokens.drop("advantage"))


def _browser_values(value):
    """A figure array as the browser gets it: plotly ships numpy arrays as typed-array specs
    ({dtype, bdata, shape}) or, when no typed array fits the values, as plain JSON numbers."""
    import base64

    import numpy as np

    if isinstance(value, dict) and "bdata" in value:
        dtypes = {"i1": np.int8, "u1": np.uint8, "i2": np.int16, "u2": np.uint16, "i4": np.int32,
                  "u4": np.uint32, "f4": np.float32, "f8": np.float64}
        arr = np.frombuffer(base64.b64decode(value["bdata"]), dtype=dtypes[value["dtype"]])
        return arr.reshape(-1, 1).tolist() if "shape" in value else arr.tolist()
    return value


BIG_STEP = 10**15  # beyond int32 (a wrapped cast drew it at -1530494976), exact as a float64 (< 2**53)


@pytest.mark.parametrize("fn", STEP_FIGURES)
def test_steps_beyond_int32_are_drawn_at_their_step(fn) -> None:
    import json

    from dash._utils import to_json  # what the dashboard sends to the browser

    frame = pl.DataFrame({"step": [3, BIG_STEP]}).with_columns(
        *[pl.lit(0.5).alias(c) for c in ("rollout/truncation_rate", "token/student_logp_mean",
                                         "token/adv_repetitive_mean", "token/advantage_mean")])
    fig = fn({"r": frame})
    drawn = [t for t in fig.data if len(t.x)]
    assert drawn
    for trace in drawn:
        assert list(trace.x) == [3, BIG_STEP]
        assert [c[0] for c in trace.customdata] == [3, BIG_STEP]
    sent = json.loads(to_json(fig))["data"]
    for trace in (t for t in sent if t.get("x") is not None and len(_browser_values(t["x"]))):
        assert _browser_values(trace["x"]) == [3, BIG_STEP]
        assert [c[0] for c in _browser_values(trace["customdata"])] == [3, BIG_STEP]


def test_length_distribution_keeps_big_steps() -> None:
    lengths = pl.DataFrame({"step": [1, 1, BIG_STEP], "num_tokens": [4, 8, 12]})
    fig = plots.fig_length_distribution(lengths)
    for trace in fig.data:
        assert list(trace.x) == [1, BIG_STEP]
    assert [c[0] for c in fig.data[1].customdata] == [1, BIG_STEP]
