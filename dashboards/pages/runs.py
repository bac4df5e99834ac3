"""Run list (``/``): every run under RUNS_ROOT with its status, step, verdict and last alert.

One run that cannot be read (a garbage manifest, a file of the wrong type, any exception) gets a row with
a short error; the other runs are listed as usual.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import dash
from dash import Input, Output, callback, dcc, html

from opdwatch.dashboards.components import detector_history, event_line, fmt, href, run_href, short_error, table
from opdwatch.dashboards.state import Watched, registry
from opdwatch.errors import OpdwatchError
from opdwatch.summary import STALE_AFTER_S

if TYPE_CHECKING:
    from opdwatch.verdict import Verdict

dash.register_page(__name__, path="/", name="Runs", title="opdwatch: runs", order=0)

COLUMNS = ("run", "status", "step", "verdict", "detector", "last alert", "updated")
LIST_REFRESH_MS = 5000
log = logging.getLogger(__name__)


def layout(**_query: str) -> html.Div:
    return html.Div([
        html.H2("Runs"),
        html.Div(id="runs-table"),
        html.Div(dcc.Link("compare all runs", href="/compare", id="runs-compare-all"), className="opd-meta"),
        dcc.Interval(id="runs-tick", interval=LIST_REFRESH_MS),
    ], className="opd-page")


@callback(Output("runs-table", "children"), Output("runs-compare-all", "href"),
          Input("runs-tick", "n_intervals"))
def refresh(_n: int | None) -> tuple[html.Table | html.P, str]:
    reg = registry()
    names = reg.names()
    if not names:
        return html.P(f"No runs under {reg.root} yet.", className="opd-meta"), "/compare"
    rows = [run_row(reg, name) for name in names]
    return table(COLUMNS, rows, id="runs-list"), href("/compare", runs=",".join(names[:8]))


def run_row(reg, name: str) -> list:  # noqa: ANN001 - Registry
    try:
        return _row(reg.get(name))
    except OpdwatchError as exc:  # unreadable manifest, newer format: listed, not openable
        return [name, "unreadable", "-", short_error(exc), "-", "-", "-"]
    except Exception as exc:  # noqa: BLE001 - whatever breaks in one run must not hide all the others
        log.warning("run list: %s could not be read", name, exc_info=True)
        return [name, "unreadable", "-", short_error(exc), "-", "-", "-"]


def _row(watched: Watched) -> list:
    name = watched.name
    m = watched.live.manifest
    state = watched.detector_state
    detector = html.Span(state.level, className=f"opd-level-{state.level}") if state else "-"
    return [dcc.Link(name, href=run_href(name)), status(watched), fmt(watched.live.last_step), verdict(watched),
            detector, event_line(watched.last_alert()), fmt(m.get("updated_at"))]


def status(watched: Watched) -> str:
    m = watched.live.manifest
    beat = m.get("heartbeat")
    if m.get("status") == "running" and isinstance(beat, (int, float)) and time.time() - beat > STALE_AFTER_S:
        return "stale (no writes for 10 min)"
    return str(m.get("status", "unknown"))


def verdict(watched: Watched) -> html.Span | str:
    """opdwatch.verdict on the recorded train-step metrics (their rollout/* and token/* columns are what
    step_series reports for an unthinned run), so the list never reads a token table. When the detector
    beside it says something of another kind (an alarm beside "healthy", "ok" beside a past collapse),
    a short line under the label says why (:func:`opdwatch.verdict.detector_story`)."""
    from opdwatch.verdict import detector_story

    v = list_verdict(watched)
    if v is None:
        return "no steps yet"
    state = watched.detector_state
    first_warning, first_alarm = detector_history(watched)
    story, differ = detector_story(v, state.level if state else None, first_warning=first_warning,
                                   first_alarm=first_alarm)
    label = html.Span(v.label, title="; ".join(v.reasons), className=f"opd-verdict-{v.kind}")
    note = watched.live.step_note()  # the step table's warning, as the CLI prints it (without the path)
    lines = ([html.Div(story, className="opd-story")] if differ else []) + (
        [html.Div(f"warning: {note}", className="opd-story")] if note else [])
    return html.Span([label, *lines]) if lines else label


def list_verdict(watched: Watched) -> Verdict | None:
    """The run's verdict on its train-step metrics, once per run version (None before the first step)."""
    from opdwatch.verdict import verdict as judge

    def build() -> Verdict | None:
        train = watched.live.steps("train").collect()
        return judge(train) if train.height else None

    return watched.cached("list-verdict", build)
