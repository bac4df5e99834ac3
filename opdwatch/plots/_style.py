"""Shared look of the opdwatch figures: run colours, event and onset markers, step-clickable traces.

Every trace carries the step in ``customdata`` (first element) so a click handler (the dashboard) can read
``clickData["points"][0]["customdata"]`` whatever the figure.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
import polars as pl

# Qualitative palette that stays readable overlaid (plotly's D3 order, OPD first in blue).
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
# Event kinds drawn on the figures and how: vertical line colour. Info/checkpoint events would only clutter.
EVENT_COLORS = {"warning": "#f0a202", "alert": "#f0a202", "alarm": "#d62728", "intervention": "#6a3d9a",
                "error": "#444444", "skip_update": "#999999", "resume": "#2ca02c"}
# A small white template instead of plotly's "plotly_white": assigning a full built-in template deep-copies
# its colour scales for every trace type (~35 ms per figure), the largest cost of a dashboard refresh.
_GRID = {"gridcolor": "#ebf0f8", "linecolor": "#ebf0f8", "zerolinecolor": "#ebf0f8", "automargin": True}
TEMPLATE = {"layout": {"paper_bgcolor": "white", "plot_bgcolor": "white", "colorway": list(PALETTE),
                       "font": {"color": "#2a3f5f"}, "xaxis": _GRID, "yaxis": _GRID,
                       "hoverlabel": {"align": "left"}, "title": {"x": 0.05}}}


def run_color(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def escape(text: str) -> str:
    """Plotly renders a subset of HTML in text and hover labels; rollout text must never be interpreted."""
    return html.escape(text, quote=False)


def line(frame: pl.DataFrame, column: str, *, name: str, color: str, dash: str = "solid",
         legendgroup: str | None = None, showlegend: bool = True, label: str | None = None) -> go.Scatter:
    """A step-indexed line of ``column``; nulls are gaps. Hover shows the run, the metric and the step."""
    data = frame.select("step", column).filter(pl.col(column).is_not_null()) if column in frame.columns \
        else pl.DataFrame(schema={"step": pl.Int64, column: pl.Float64})
    # numpy arrays, not lists: plotly validates lists element by element (seconds at 2,000 steps). Steps
    # stay int64: plotly.py itself ships them as the smallest typed array that holds them, or as plain JSON
    # numbers when none does (plotly.js has no int64 typed array); a cast to int32 here wrapped step 10**15
    # to -1530494976. JSON numbers are float64 in the browser: steps are exact up to 2**53.
    steps = data["step"].to_numpy().astype(np.int64, copy=False)
    return go.Scatter(
        x=steps, y=data[column].to_numpy(), mode="lines+markers", name=name,
        line={"color": color, "dash": dash, "width": 1.8}, marker={"size": 4, "color": color},
        legendgroup=legendgroup or name, showlegend=showlegend, customdata=steps.reshape(-1, 1),
        meta={"column": column},  # lets a live view refresh the points without rebuilding the figure
        hovertemplate=f"{escape(name)}<br>{escape(label or column)}: %{{y:.4g}}<br>step %{{customdata[0]}}"
                      "<extra></extra>",
    )


def trace_columns(fig: go.Figure) -> list[str | None]:
    """The series column behind each trace of a step figure (None for traces not drawn by :func:`line`)."""
    return [t.meta.get("column") if isinstance(t.meta, dict) else None for t in fig.data]


def trace_points(frame: pl.DataFrame, column: str) -> tuple[list[int], list[float]]:
    """(steps, values) that :func:`line` draws for ``column``: non-null rows only."""
    if column not in frame.columns:
        return [], []
    data = frame.select("step", column).filter(pl.col(column).is_not_null())
    return data["step"].to_list(), data[column].to_list()


def _column_xrefs(fig: go.Figure, rows: int, cols: int) -> list[str]:
    """The x axis of each subplot column (rows of a column share their steps), first column first."""
    refs = []
    for c in range(1, cols + 1):
        sp = fig.get_subplot(rows, c)
        refs.append(sp.xaxis.plotly_name.replace("axis", "") if sp is not None else "x")
    return refs


def _vlines(fig: go.Figure, lines: list[tuple[float, dict, dict | None]], rows: int, cols: int) -> None:
    """Vertical lines (step, line style, annotation or None) through every subplot, added in one layout
    update with one full-height shape per column: add_vline validates the whole figure per call and per
    subplot (~25 ms each), which made a 2,000-step figure with a few dozen events take seconds."""
    if not lines:
        return
    xrefs = _column_xrefs(fig, rows, cols)
    shapes, notes = [], []
    for step, style, note in lines:
        for k, xref in enumerate(xrefs):
            shapes.append({"type": "line", "x0": step, "x1": step, "y0": 0, "y1": 1, "xref": xref,
                           "yref": "paper", "line": style, "opacity": 0.8})
            if note is not None and k == 0:
                notes.append({"x": step, "y": 1.0, "xref": xref, "yref": "paper", "showarrow": False,
                              "yanchor": "bottom", **note})
    fig.update_layout(shapes=[*fig.layout.shapes, *shapes], annotations=[*fig.layout.annotations, *notes])


def add_events(fig: go.Figure, events: Mapping[str, pl.DataFrame] | None, *, rows: int,
               cols: int = 1) -> None:
    """Dotted vertical lines at the steps of warnings, alarms and interventions on every subplot; a marker
    above the first subplot carries the run, kind and message on hover."""
    lines = []
    for label, frame in (events or {}).items():
        if frame is None or frame.height == 0:
            continue
        shown = frame.filter(pl.col("kind").is_in(list(EVENT_COLORS)) & pl.col("step").is_not_null())
        for kind, step, message in shown.select("kind", "step", "message").iter_rows():
            color = EVENT_COLORS[kind]
            lines.append((step, {"color": color, "width": 1, "dash": "dot"},
                          {"text": "\u25bc", "font": {"color": color},
                           "hovertext": escape(f"{label}: {kind} at step {step}: {message}")}))
    _vlines(fig, lines, rows, cols)


def add_onsets(fig: go.Figure, onsets: Mapping[str, int | None] | None, labels: list[str], *, rows: int,
               cols: int = 1) -> None:
    """A dashed vertical line in the run's colour at each run's onset step, labelled once."""
    lines = []
    for label, step in (onsets or {}).items():
        if step is None:
            continue
        color = run_color(labels.index(label)) if label in labels else "#000000"
        lines.append((step, {"color": color, "width": 2, "dash": "dash"},
                      {"text": escape(f"onset {label}: step {step}"), "xanchor": "left", "yanchor": "top",
                       "bgcolor": "rgba(255,255,255,0.8)", "font": {"size": 11}}))
    _vlines(fig, lines, rows, cols)


# An episode to shade: (first step, last step or None while it is ongoing, hover text).
EpisodeSpan = tuple[int, int | None, str]


def add_episodes(fig: go.Figure, episodes: Mapping[str, Sequence[EpisodeSpan]] | None, labels: list[str],
                 last_steps: Mapping[str, int], *, rows: int, cols: int = 1) -> None:
    """Collapse episodes (:mod:`opdwatch.episodes`) as shaded bands in the run's colour through every
    subplot, below the curves; an ongoing episode runs to the run's last step (``last_steps``). A "collapse"
    tag at the bottom left of the band in the first subplot (where a collapsed truncation curve is not:
    above it are the subplot titles) carries the run, span and peak on hover."""
    xrefs = _column_xrefs(fig, rows, cols)
    sp = fig.get_subplot(1, 1) if rows * cols > 1 else None
    yref = f"{sp.yaxis.plotly_name.replace('axis', '')} domain" if sp is not None else "paper"
    shapes, notes = [], []
    for label, spans in (episodes or {}).items():
        color = run_color(labels.index(label)) if label in labels else "#000000"
        for start, end, text in spans:
            stop = end if end is not None else last_steps.get(label, start)
            # half a step either side, so a band covers the markers of its first and last steps
            for k, xref in enumerate(xrefs):
                shapes.append({"type": "rect", "x0": start - 0.5, "x1": stop + 0.5, "y0": 0, "y1": 1, "xref": xref,
                               "yref": "paper", "fillcolor": color, "opacity": 0.12, "line": {"width": 0},
                               "layer": "below", "name": f"episode {label}"})
                if k == 0:
                    notes.append({"x": start - 0.5, "y": 0.0, "xref": xref, "yref": yref, "showarrow": False,
                                  "xanchor": "left", "yanchor": "bottom", "text": "collapse",
                                  "font": {"size": 10, "color": color}, "bgcolor": "rgba(255,255,255,0.6)",
                                  "hovertext": escape(f"{label}: {text}")})
    if shapes:
        fig.update_layout(shapes=[*fig.layout.shapes, *shapes], annotations=[*fig.layout.annotations, *notes])


def finish(fig: go.Figure, *, title: str, height: int) -> go.Figure:
    fig.update_layout(title=title, template=TEMPLATE, height=height, hovermode="closest",
                      legend={"orientation": "h", "yanchor": "bottom", "y": -0.18, "x": 0},
                      margin={"l": 60, "r": 20, "t": 70, "b": 80}, clickmode="event")
    return fig
