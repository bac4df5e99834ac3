"""The probe's figure: advantage per copy index of the loop, and EOS advantage after 0, 1, 2, ... repeats.

Pure function of probe summaries (opdwatch.probe.summary.ProbeSummary, or their `per_copy` / `eos` lists);
several pairs (label -> summary) are overlaid, one colour each. Used by `opdwatch probe --out` and docs/probe.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from opdwatch.plots._style import TEMPLATE, escape, run_color


def _copy_label(k: int) -> str:
    return "regular" if k == 0 else "last chunk" if k == 1 else f"copy {k}"


def fig_probe(summaries: Mapping[str, Any]) -> go.Figure:  # noqa: ANN401 - ProbeSummary or its dict form
    """Left: teacher - student advantage per copy index (regular tokens, the response's last chunk, its repeated
    copies). Right: EOS advantage at the natural end (0 repeats) and after each repeated copy."""
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12, subplot_titles=(
        "advantage per token, by copy index", "EOS advantage after j repeated copies"))
    for i, (label, summary) in enumerate(summaries.items()):
        per_copy = summary["per_copy"] if isinstance(summary, Mapping) else summary.per_copy
        eos = summary["eos"] if isinstance(summary, Mapping) else summary.eos
        color, name = run_color(i), escape(str(label))
        fig.add_trace(go.Scatter(
            x=[_copy_label(c["copy"]) for c in per_copy], y=[c["advantage"] for c in per_copy], name=name,
            mode="lines+markers", line={"color": color}, legendgroup=name,
            customdata=[[c["teacher_logp"], c["student_logp"]] for c in per_copy],
            hovertemplate=f"{name}<br>%{{x}}: advantage %{{y:.3f}}<br>teacher %{{customdata[0]:.3f}}, "
                          "student %{customdata[1]:.3f}<extra></extra>"), row=1, col=1)
        fig.add_trace(go.Scatter(
            x=[e["repeats"] for e in eos], y=[e["advantage"] for e in eos], name=name, showlegend=False,
            mode="lines+markers", line={"color": color}, legendgroup=name,
            customdata=[[e["teacher_logp"], e["student_logp"]] for e in eos],
            hovertemplate=f"{name}<br>EOS after %{{x}} repeats: advantage %{{y:.3f}}<br>teacher "
                          "%{customdata[0]:.3f}, student %{customdata[1]:.3f}<extra></extra>"), row=1, col=2)
    for col in (1, 2):
        fig.add_hline(y=0, line={"color": "#999999", "width": 1, "dash": "dot"}, row=1, col=col)
    fig.update_yaxes(title_text="teacher − student log-prob (nats)", row=1, col=1)
    fig.update_xaxes(title_text="repeated copies before EOS", dtick=1, row=1, col=2)
    fig.update_layout(template=TEMPLATE, height=380, margin={"t": 50, "b": 40, "l": 60, "r": 20},
                      legend={"orientation": "h", "y": -0.2})
    return fig


def probe_report_html(summaries: Mapping[str, Any], verdicts: Mapping[str, tuple[str, list[str]]]) -> str:  # noqa: ANN401
    """A self-contained HTML page (plotly inlined): the verdict of each pair, its reasons, and the figure."""
    items = "".join(
        f"<li><b>{escape(label)}</b>: {escape(risk)} risk<ul>"
        + "".join(f"<li>{escape(r)}</li>" for r in reasons) + "</ul></li>"
        for label, (risk, reasons) in verdicts.items())
    body = fig_probe(summaries).to_html(full_html=False, include_plotlyjs=True)
    return ("<!doctype html><html><head><meta charset='utf-8'><title>opdwatch probe</title></head>"
            f"<body style='font-family:sans-serif'><h2>opdwatch probe: will this run collapse?</h2><ul>{items}</ul>"
            f"{body}</body></html>")
