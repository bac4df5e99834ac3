"""Shared look of the opdwatch figures: run colours, event and onset markers, step-clickable traces.

Every trace carries the step in ``customdata`` (first element) so a click handler (the dashboard) can read
``clickData["points"][0]["customdata"]`` whatever the figure.
"""

from __future__ import annotations

import html
from collections.abc import Mapping

import plotly.graph_objects as go
import polars as pl

# Qualitative palette that stays readable overlaid (plotly's D3 order, OPD first in blue).
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
# Event kinds drawn on the figures and how: vertical line colour. Info/checkpoint events would only clutter.
EVENT_COLORS = {"warning": "#f0a202", "alert": "#f0a202", "alarm": "#d62728", "intervention": "#6a3d9a",
                "error": "#444444", "skip_update": "#999999", "resume": "#2ca02c"}
TEMPLATE = "plotly_white"


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
    steps = data["step"].to_list()
    return go.Scatter(
        x=steps, y=data[column].to_list(), mode="lines+markers", name=name,
        line={"color": color, "dash": dash, "width": 1.8}, marker={"size": 4, "color": color},
        legendgroup=legendgroup or name, showlegend=showlegend, customdata=[[s] for s in steps],
        hovertemplate=f"{escape(name)}<br>{escape(label or column)}: %{{y:.4g}}<br>step %{{customdata[0]}}"
                      "<extra></extra>",
    )


def add_events(fig: go.Figure, events: Mapping[str, pl.DataFrame] | None, *, rows: int,
               cols: int = 1) -> None:
    """Dotted vertical lines at the steps of warnings, alarms and interventions on every subplot; a marker
    above the first subplot carries the run, kind and message on hover."""
    if not events:
        return
    for label, frame in events.items():
        if frame is None or frame.height == 0:
            continue
        shown = frame.filter(pl.col("kind").is_in(list(EVENT_COLORS)) & pl.col("step").is_not_null())
        for kind, step, message in shown.select("kind", "step", "message").iter_rows():
            for r in range(1, rows + 1):
                for c in range(1, cols + 1):
                    # Only the first subplot gets an annotation: plotly draws its default "new text"
                    # for any annotation_* keyword, even None, so the others get none at all.
                    note = {"annotation_text": "\u25bc", "annotation_position": "top",
                            "annotation_hovertext": escape(f"{label}: {kind} at step {step}: {message}"),
                            "annotation_font": {"color": EVENT_COLORS[kind]}} if r == 1 and c == 1 else {}
                    fig.add_vline(
                        x=step, line={"color": EVENT_COLORS[kind], "width": 1, "dash": "dot"}, opacity=0.8,
                        row=r, col=c, exclude_empty_subplots=False, **note)


def add_onsets(fig: go.Figure, onsets: Mapping[str, int | None] | None, labels: list[str], *, rows: int,
               cols: int = 1) -> None:
    """A dashed vertical line in the run's colour at each run's onset step, labelled once."""
    if not onsets:
        return
    for label, step in onsets.items():
        if step is None:
            continue
        color = run_color(labels.index(label)) if label in labels else "#000000"
        for r in range(1, rows + 1):
            for c in range(1, cols + 1):
                note = ({"annotation_text": escape(f"onset {label}: step {step}"),
                         "annotation_position": "top left"} if r == 1 and c == 1 else {})
                fig.add_vline(x=step, line={"color": color, "width": 2, "dash": "dash"}, row=r, col=c,
                              exclude_empty_subplots=False, **note)


def finish(fig: go.Figure, *, title: str, height: int) -> go.Figure:
    fig.update_layout(title=title, template=TEMPLATE, height=height, hovermode="closest",
                      legend={"orientation": "h", "yanchor": "bottom", "y": -0.18, "x": 0},
                      margin={"l": 60, "r": 20, "t": 70, "b": 80}, clickmode="event")
    return fig
