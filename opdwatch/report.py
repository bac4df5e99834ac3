"""report.html: one self-contained page (plotly.js embedded, no CDN: it opens offline) with every figure of
one or more analysed runs overlaid, the onsets, collapse episodes (shaded) and detector events marked, and
each run's verdict with its episodes.

Figure sections carry stable ids (``fig-truncation-repetition``, ...; :data:`FIGURE_IDS`) so tests and
links can find them.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import plotly.graph_objects as go
import polars as pl
from plotly.offline import get_plotlyjs

from opdwatch import plots
from opdwatch._version import __version__
from opdwatch.analysis import LATEST, RunAnalysis
from opdwatch.comparison import cell_text, comparison_rows, shown_columns
from opdwatch.drilldown import first_repetitive_rollouts, rollout_tokens
from opdwatch.episodes import spans
from opdwatch.errors import OpdwatchError

# Overlay figures: id, heading, function.
OVERLAYS = (
    ("fig-truncation-repetition", "Truncation, repetition and validation accuracy (Fig. 2)",
     plots.fig_truncation_repetition),
    ("fig-logprobs-length", "Log-probabilities, advantage and response length (Fig. 3)", plots.fig_logprobs_length),
    ("fig-repetitive-advantage", "Repetitive vs regular tokens (Fig. 4)", plots.fig_repetitive_advantage),
    ("fig-synchronised-spikes", "Synchronised spikes (Fig. 7)", plots.fig_synchronised_spikes),
)
FIGURE_IDS = (*(o[0] for o in OVERLAYS), "fig-length-distribution", "fig-token-view")


def render_report(analyses: Sequence[RunAnalysis]) -> str:
    """The report page as an HTML string."""
    series = {a.label: a.series for a in analyses}
    events = {a.label: a.events for a in analyses}
    onsets = {a.label: a.onset.step for a in analyses}
    episodes = {a.label: spans(a.verdict.episodes) for a in analyses}
    body = [_summary_table(analyses)]
    if len(analyses) > 1:
        body.append(_comparison_table(analyses))
    for fig_id, heading, fn in OVERLAYS:
        body.append(_section(fig_id, heading, [fn(series, events=events, onsets=onsets, episodes=episodes)]))
    body.append(_section("fig-length-distribution", "Response-length distribution",
                         [_titled(plots.fig_length_distribution(a.lengths), a.label) for a in analyses]))
    token_figs, notes = [], []
    for a in analyses:
        fig, note = _token_view(a)
        notes.append(note)
        if fig is not None:
            token_figs.append(fig)
    body.append(_section("fig-token-view", "First repetitive rollout, tokens coloured by advantage", token_figs,
                         notes=notes))
    body.append(_events_table(analyses))
    title = "opdwatch report: " + ", ".join(a.label for a in analyses)
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_e(title)}</title><style>{_CSS}</style>"
        f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>"
        f"<h1>{_e(title)}</h1><p class='meta'>opdwatch {__version__}, generated {stamp}</p>"
        + "\n".join(body) + "</body></html>\n"
    )


def write_report(analyses: Sequence[RunAnalysis], out: str | Path) -> Path:
    """Write :func:`render_report` to ``out`` atomically and return the path."""
    out = Path(out)
    if out.exists() and out.is_dir():
        out = out / "report.html"
    if not out.parent.exists():
        raise OpdwatchError(f"{out.parent}: no such directory for the report")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")  # a reader never sees half a report
    tmp.write_text(render_report(analyses), encoding="utf-8")
    os.replace(tmp, out)
    return out


# ---------------------------------------------------------------------------------------------- pieces
def _section(fig_id: str, heading: str, figs: list[go.Figure], *, notes: Sequence[str] = ()) -> str:
    parts = [f"<section id='{fig_id}' class='figure'><h2>{_e(heading)}</h2>"]
    parts += [f"<p class='note'>{_e(n)}</p>" for n in notes if n]
    for i, fig in enumerate(figs):
        parts.append(fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"{fig_id}-{i}",
                                 config={"displaylogo": False, "responsive": True}))
    return "".join(parts) + "</section>"


def _titled(fig: go.Figure, label: str) -> go.Figure:
    return fig.update_layout(title=f"{_e(label)}: {fig.layout.title.text}")


def _token_view(a: RunAnalysis) -> tuple[go.Figure | None, str]:
    first = first_repetitive_rollouts(a.run, n=20)
    if first.height == 0:
        return None, f"{a.label}: no repetitive rollout."
    for row in first.iter_rows(named=True):  # the first one whose token rows were kept
        if not row["tokens_recorded"]:
            continue
        try:
            tokens = rollout_tokens(a.run, step=row["step"], rollout=row["rollout"], rank=row["rank"])
        except OpdwatchError:
            continue
        where = f"{a.label}: step {row['step']}, rank {row['rank']}, rollout {row['rollout']}"
        return plots.fig_token_view(tokens, title=where), f"{where} (finish: {row['finish_reason']})"
    return None, f"{a.label}: repetitive rollouts exist but their token rows were not recorded."


def _summary_table(analyses: Sequence[RunAnalysis]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in ("run", "status", "steps", "onset", "verdict", "collapse episodes",
                                                 "reasons"))
    rows = []
    for a in analyses:
        s = a.summary()
        reasons = "".join(f"<li>{_e(r)}</li>" for r in s["reasons"])
        episodes = "<br>".join(_e(e.describe()) for e in a.verdict.episodes) or "-"
        rows.append(f"<tr><td>{_e(a.label)}<br><small>{_e(s['path'])}</small></td><td>{_e(s['status'])}</td>"
                    f"<td>{s['steps']}</td><td>{'-' if s['onset_step'] is None else s['onset_step']}</td>"
                    f"<td class='v-{a.verdict.kind}'>{_e(s['verdict'])}</td><td class='episodes'>{episodes}</td>"
                    f"<td><ul>{reasons}</ul>"
                    f"<small>{_e(s['token_series'])}</small></td></tr>")
    metric_head = "".join(f"<th>{_e(a.label)}</th>" for a in analyses)
    metric_rows = []
    for column, name in LATEST:
        cells = []
        for a in analyses:
            latest = a.summary()["latest"].get(column)
            cells.append("-" if latest is None or latest["value"] is None
                         else f"{latest['value']:.4g} <small>(step {latest['step']})</small>")
        if any(c != "-" for c in cells):
            metric_rows.append(f"<tr><td>{_e(name)}</td>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return (f"<section id='summary'><h2>Summary</h2><table><tr>{head}</tr>{''.join(rows)}</table>"
            f"<h3>Latest health metrics</h3><table><tr><th>metric</th>{metric_head}</tr>{''.join(metric_rows)}"
            "</table></section>")


def _comparison_table(analyses: Sequence[RunAnalysis]) -> str:
    """The arms side by side, one row each, as in the paper's Table 2 (opdwatch.comparison)."""
    rows = comparison_rows(analyses)
    columns = shown_columns(rows)
    head = "".join(f"<th>{_e(h)}</th>" for _, h in columns)
    body = "".join("<tr>" + "".join(f"<td>{_e(cell_text(r, k))}</td>" for k, _ in columns) + "</tr>" for r in rows)
    return (f"<section id='comparison'><h2>Comparison (Table 2 layout)</h2><table><tr>{head}</tr>{body}</table>"
            "<p class='note'>Validation accuracy: first, last and best validation (with its step); greedy when the run "
            "also validated greedily. Peak truncation: the largest train rollout truncation rate.</p></section>")


def _events_table(analyses: Sequence[RunAnalysis]) -> str:
    rows = []
    for a in analyses:
        shown = a.events.filter(pl.col("kind") != "info") if a.events.height else a.events
        for step, kind, message in shown.select("step", "kind", "message").iter_rows():
            rows.append(f"<tr><td>{_e(a.label)}</td><td>{'-' if step is None else step}</td><td>{_e(kind)}</td>"
                        f"<td>{_e(message)}</td></tr>")
    if not rows:
        return "<section id='events'><h2>Events</h2><p>No warnings, alarms or interventions.</p></section>"
    return ("<section id='events'><h2>Events</h2><table><tr><th>run</th><th>step</th><th>kind</th>"
            f"<th>message</th></tr>{''.join(rows)}</table></section>")


def _e(text: object) -> str:
    return html.escape(str(text))


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
td, th { border: 1px solid #ddd; padding: 4px 8px; vertical-align: top; text-align: left; }
.v-healthy { color: #2ca02c; font-weight: bold; } .v-inflating { color: #e08000; font-weight: bold; }
.v-collapsed { color: #d62728; font-weight: bold; } .v-degraded { color: #e08000; font-weight: bold; }
.meta, .note, small { color: #666; }
section.figure { margin-top: 2em; }
"""
