"""Step-indexed figures of the paper (Figs 2, 3, 4, 7) and the response-length distribution.

Each takes ``series``: run label -> :func:`opdwatch.series.step_series` frame (several runs are overlaid,
one colour per run), plus optional ``events`` (run label -> events frame) and ``onsets`` (run label ->
onset step or None) drawn as vertical lines, and ``episodes`` (run label -> (start, end or None, text)
spans, :func:`opdwatch.episodes.spans`) shaded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from opdwatch.metric_defs import (
    ACCURACY,
    ADV_REGULAR_MEAN,
    ADV_REPETITIVE_MEAN,
    ADVANTAGE_MEAN,
    MEAN_LENGTH,
    REPETITION_RATE,
    REPETITIVE_SHARE,
    STUDENT_LOGP_MEAN,
    TEACHER_LOGP_MEAN,
    TRUNCATION_RATE,
    VAL_ACCURACY,
    VAL_TRUNCATION_RATE,
)
from opdwatch.plots._style import (
    EpisodeSpan,
    add_episodes,
    add_events,
    add_onsets,
    escape,
    finish,
    line,
    run_color,
)

Series = Mapping[str, pl.DataFrame]
Events = Mapping[str, pl.DataFrame] | None
Onsets = Mapping[str, int | None] | None
Episodes = Mapping[str, Sequence[EpisodeSpan]] | None  # run label -> collapse episodes, shaded
# A panel: its title, and the lines it draws: (column, line dash, legend suffix).
Panel = tuple[str, Sequence[tuple[str, str, str]]]


def fig_truncation_repetition(series: Series, *, events: Events = None, onsets: Onsets = None,
                              episodes: Episodes = None) -> go.Figure:
    """Fig. 2: rollout and validation truncation rate, rollout repetition rate, validation accuracy."""
    panels: list[Panel] = [
        ("rollout truncation rate", [(TRUNCATION_RATE, "solid", "")]),
        ("validation truncation rate", [(VAL_TRUNCATION_RATE, "solid", "")]),
        ("rollout repetition rate", [(REPETITION_RATE, "solid", "")]),
        ("validation accuracy", [(VAL_ACCURACY, "solid", "")]),
    ]
    return _grid(series, panels, rows=2, cols=2, events=events, onsets=onsets, episodes=episodes,
                 title="Truncation and repetition (paper Fig. 2)", height=620)


def fig_logprobs_length(series: Series, *, events: Events = None, onsets: Onsets = None,
                        episodes: Episodes = None) -> go.Figure:
    """Fig. 3: mean student log-prob, teacher log-prob, advantage and response length per step."""
    panels: list[Panel] = [
        ("student log-prob (nats/token)", [(STUDENT_LOGP_MEAN, "solid", "")]),
        ("teacher log-prob (nats/token)", [(TEACHER_LOGP_MEAN, "solid", "")]),
        ("advantage (teacher - student)", [(ADVANTAGE_MEAN, "solid", "")]),
        ("mean response length (tokens)", [(MEAN_LENGTH, "solid", "")]),
    ]
    return _grid(series, panels, rows=2, cols=2, events=events, onsets=onsets, episodes=episodes,
                 title="Log-probabilities, advantage and length (paper Fig. 3)", height=620)


def fig_repetitive_advantage(series: Series, *, events: Events = None, onsets: Onsets = None,
                             episodes: Episodes = None) -> go.Figure:
    """Fig. 4: mean advantage of repetitive vs regular tokens, and the share of repetitive tokens."""
    panels: list[Panel] = [
        ("mean advantage: repetitive (solid) vs regular (dashed) tokens",
         [(ADV_REPETITIVE_MEAN, "solid", " repetitive"),
          (ADV_REGULAR_MEAN, "dash", " regular")]),
        ("share of repetitive tokens", [(REPETITIVE_SHARE, "solid", "")]),
    ]
    return _grid(series, panels, rows=1, cols=2, events=events, onsets=onsets, episodes=episodes,
                 title="Advantage of repetitive tokens (paper Fig. 4)", height=420)


def fig_synchronised_spikes(series: Series, *, events: Events = None, onsets: Onsets = None,
                            episodes: Episodes = None) -> go.Figure:
    """Fig. 7-style stack: accuracy, advantage and teacher log-prob on one step axis, to show that their
    jumps happen at the same steps. Accuracy is validation accuracy where the run has it, else rollout
    accuracy."""
    series = {label: with_accuracy(frame) for label, frame in series.items()}
    panels: list[Panel] = [
        ("accuracy (validation, else rollouts)", [("accuracy", "solid", "")]),
        ("mean advantage", [(ADVANTAGE_MEAN, "solid", "")]),
        ("teacher log-prob", [(TEACHER_LOGP_MEAN, "solid", "")]),
    ]
    return _grid(series, panels, rows=3, cols=1, events=events, onsets=onsets, episodes=episodes,
                 title="Synchronised spikes (paper Fig. 7)", height=720)


def fig_length_distribution(lengths: pl.DataFrame) -> go.Figure:
    """Response-length distribution per step: a step x length heat map of rollout counts with the median
    and 90th percentile on top. ``lengths`` has columns ``step`` and ``num_tokens`` (one row per rollout)."""
    fig = go.Figure()
    if lengths.height:
        longest = int(lengths["num_tokens"].max() or 0)
        width = max(1, -(-(longest + 1) // 40))  # about 40 length bins whatever the budget
        # Counts on a (length bin x step) grid with numpy: building the cells in Python, and per-cell
        # customdata, cost seconds at 2,000 steps (the dashboard redraws this on every tick).
        steps_arr = lengths["step"].to_numpy()
        steps, col = np.unique(steps_arr, return_inverse=True)
        row = lengths["num_tokens"].to_numpy() // width
        bins = np.arange(0, longest + width, width)
        z = np.zeros((len(bins), len(steps)), dtype=np.int64)
        np.add.at(z, (row, col), 1)
        fig.add_trace(go.Heatmap(
            x=steps, y=bins, z=z, colorscale="Blues", colorbar={"title": "rollouts"},
            hovertemplate=f"step %{{x}}<br>length %{{y}} (bin of {width})<br>%{{z}} rollouts<extra></extra>",
        ))
        quant = lengths.group_by("step").agg(
            pl.col("num_tokens").cast(pl.Float64).median().alias("median"),
            pl.col("num_tokens").cast(pl.Float64).quantile(0.9, interpolation="linear").alias("p90"),
        ).sort("step")
        for col, dash in (("median", "solid"), ("p90", "dash")):
            fig.add_trace(line(quant, col, name=col, color="#d62728", dash=dash, label=f"{col} length"))
    fig.update_xaxes(title="step")
    fig.update_yaxes(title="response length (tokens)")
    return finish(fig, title="Response-length distribution per step", height=460)


# ---------------------------------------------------------------------------------------------- helpers
def _grid(series: Series, panels: list[Panel], *, rows: int, cols: int, events: Events, onsets: Onsets,
          title: str, height: int, episodes: Episodes = None) -> go.Figure:
    fig = make_subplots(rows=rows, cols=cols, shared_xaxes=True, subplot_titles=[p[0] for p in panels],
                        vertical_spacing=0.12 if rows < 3 else 0.07, horizontal_spacing=0.08)
    labels = list(series)
    for i, (label, frame) in enumerate(series.items()):
        for k, (_, lines) in enumerate(panels):
            r, c = k // cols + 1, k % cols + 1
            for column, dash, suffix in lines:
                trace = line(frame, column, name=f"{escape(label)}{suffix}", color=run_color(i), dash=dash,
                             legendgroup=f"{label}{suffix}", showlegend=k == 0, label=column)
                fig.add_trace(trace, row=r, col=c)
    for c in range(1, cols + 1):
        fig.update_xaxes(title_text="step", row=rows, col=c)
    # One step range for every panel: a validation panel with a few points would otherwise zoom to them.
    fig.update_xaxes(matches="x")
    last = {label: int(frame["step"].max()) for label, frame in series.items() if frame.height}
    add_episodes(fig, episodes, labels, last, rows=rows, cols=cols)
    add_onsets(fig, onsets, labels, rows=rows, cols=cols)
    add_events(fig, events, rows=rows, cols=cols)
    return finish(fig, title=title, height=height)


def with_accuracy(frame: pl.DataFrame) -> pl.DataFrame:
    """Add the ``accuracy`` column the Fig. 7 view draws: validation accuracy where the run has it."""
    cols = [c for c in (VAL_ACCURACY, ACCURACY) if c in frame.columns]
    if not cols:
        return frame.with_columns(pl.lit(None, dtype=pl.Float64).alias("accuracy"))
    val = VAL_ACCURACY
    has_val = val in frame.columns and frame[val].null_count() < frame.height
    return frame.with_columns(pl.col(cols[0] if has_val else cols[-1]).alias("accuracy"))
