"""Live run view (``/run?run=NAME``): the ``opdwatch analyze`` figures, updating while the run writes.

Every ``refresh_ms`` the page asks for the run; the registry ticks its LiveRun (only new files are read)
and the figures are rebuilt only when the run's version moved past the one this tab shows. Events
(warnings, alarms, interventions) and the onset are drawn on the curves by the shared plot functions; a
click on any point opens that step's rollouts in the token drill-down.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import dash
import polars as pl
from dash import Input, Output, Patch, State, callback, ctx, dcc, html
from dash.exceptions import PreventUpdate
from flask import current_app

from opdwatch.dashboards.components import (
    detector_history,
    event_line,
    graph,
    href,
    query_value,
    refused,
    table,
    tokens_href,
)
from opdwatch.dashboards.state import ALERT_KINDS, Watched, registry
from opdwatch.episodes import spans
from opdwatch.errors import OpdwatchError
from opdwatch.plots import (
    fig_length_distribution,
    fig_logprobs_length,
    fig_repetitive_advantage,
    fig_synchronised_spikes,
    fig_truncation_repetition,
)
from opdwatch.plots._style import EVENT_COLORS, trace_columns, trace_points
from opdwatch.plots.training import with_accuracy

if TYPE_CHECKING:
    from opdwatch.verdict import Verdict

dash.register_page(__name__, path="/run", name="Run", title="opdwatch: run", order=1)

# (component id, figure function of series/events/onsets); the length distribution is added separately.
STEP_FIGURES = (
    ("run-fig-trunc", fig_truncation_repetition),
    ("run-fig-logp", fig_logprobs_length),
    ("run-fig-repadv", fig_repetitive_advantage),
    ("run-fig-spikes", fig_synchronised_spikes),
)
LENGTH_FIGURE = "run-fig-lengths"
GRAPH_IDS = tuple(i for i, _ in STEP_FIGURES) + (LENGTH_FIGURE,)
EVENTS_SHOWN = 20
# Steps reach the browser as JSON numbers (float64): integers beyond 2**53 cannot be told apart there.
MAX_EXACT_STEP = 2**53


def layout(run: str | None = None, **_query: str) -> html.Div:
    try:
        run = query_value(run, "run")
        if not run:
            return refused("no run given: open one from the run list", id="run-refused")
        run = registry().get(run, tick=False).name  # the canonical name, whichever alias the URL used
    except OpdwatchError as exc:
        return refused(str(exc), id="run-refused")
    return html.Div([
        html.H2(run, id="run-title"),
        html.Div(id="run-meta", className="opd-meta"),
        html.Div(id="run-detector", className="opd-meta"),
        html.Div([dcc.Link("token drill-down", href=tokens_href(run), id="run-tokens-link"), " | ",
                  dcc.Link("compare with other runs", href=href("/compare", runs=run))], className="opd-meta"),
        html.P("Click a point on any curve to open that step's rollouts.", className="opd-meta"),
        *[graph(i) for i in GRAPH_IDS],
        html.H3("Events"),
        html.Div(id="run-events"),
        dcc.Store(id="run-name", data=run),
        dcc.Store(id="run-version", data=None),
        dcc.Interval(id="run-tick", interval=current_app.config.get("OPDWATCH_REFRESH_MS", 2000)),
        dcc.Location(id="run-nav", refresh="callback-nav"),
    ], className="opd-page")


@callback(*[Output(i, "figure") for i in GRAPH_IDS],
          Output("run-meta", "children"), Output("run-detector", "children"), Output("run-events", "children"),
          Output("run-version", "data"),
          Input("run-tick", "n_intervals"), State("run-name", "data"), State("run-version", "data"),
          # the timer pauses while a refresh runs: a refresh slower than the period would otherwise be
          # superseded by the next tick before its answer is shown, over and over
          running=[(Output("run-tick", "disabled"), True, False)])
def refresh(_n: int | None, name: str, shown: dict | None) -> tuple[Any, ...]:
    if not isinstance(shown, dict):  # the store as the browser sent it back: anything else is "nothing shown"
        shown = None
    try:
        watched = registry().get(name)
    except OpdwatchError:
        raise PreventUpdate from None  # the run disappeared; keep what is on screen
    if shown and watched.version == shown.get("version"):
        raise PreventUpdate  # nothing new: the browser keeps its figures, no JSON is sent
    sig = watched.cached("run-signature", lambda: signature(watched))
    if shown and shown.get("signature") == list(sig) and watched.figure_signature == sig:
        # Only points moved: replace the traces' data in place. Building the plotly figures again was
        # ~0.3 s of every refresh on a 2,000-step run; this costs a few ms.
        figs = watched.cached("run-patches", lambda: patches(watched))
    else:
        figs = watched.cached("run-figures", lambda: figures(watched, sig))
    store = {"version": watched.version, "signature": list(sig)}
    return (*figs, meta(watched), detector(watched), events_table(watched), store)


def run_verdict(watched: Watched) -> Verdict | None:
    """The verdict of the run's step series (what ``opdwatch analyze`` says), once per run version."""
    from opdwatch.verdict import verdict

    def build() -> Verdict | None:
        series = watched.live.series()
        return verdict(series) if series.height else None

    return watched.cached("run-verdict", build)


def signature(watched: Watched) -> tuple:
    """What the figures draw besides points: the events shown as lines, the onset and the collapse
    episodes (as text: the signature goes through the browser as JSON and is compared there)."""
    v = run_verdict(watched)
    onset = v.onset.step if v is not None else None
    episodes = ";".join(f"{e.start}-{e.end}" for e in v.episodes) if v is not None else ""
    events = watched.live.events()
    drawn = events.filter(pl.col("kind").is_in(list(EVENT_COLORS)) & pl.col("step").is_not_null()).height
    return (drawn, onset, episodes)


def figures(watched: Watched, sig: tuple) -> list[Any]:
    """The run's figures from the shared plot functions (the same as ``opdwatch analyze`` draws)."""
    series = watched.live.series()
    label = watched.name
    v = run_verdict(watched)
    kw = {"events": {label: watched.live.events()}, "onsets": {label: sig[1]},
          "episodes": {label: spans(v.episodes) if v is not None else []}}
    out = [fn({label: series}, **kw) for _, fn in STEP_FIGURES]
    watched.figure_columns = {gid: trace_columns(fig) for (gid, _), fig in zip(STEP_FIGURES, out)}
    watched.figure_signature = sig
    out.append(fig_length_distribution(watched.live.lengths()))
    return out


def patches(watched: Watched) -> list[Any]:
    """New points for every trace of the step figures (same traces, same layout), and the length
    distribution rebuilt (its bins change with the longest rollout)."""
    frame = with_accuracy(watched.live.series())
    out: list[Any] = []
    for gid, _ in STEP_FIGURES:
        patch = Patch()
        for i, column in enumerate(watched.figure_columns.get(gid, [])):
            if column is None:
                continue
            steps, values = trace_points(frame, column)
            patch["data"][i]["x"] = steps
            patch["data"][i]["y"] = values
            patch["data"][i]["customdata"] = [[s] for s in steps]
        out.append(patch)
    out.append(fig_length_distribution(watched.live.lengths()))
    return out


def meta(watched: Watched) -> list[Any]:
    """Status, the step facts and the step table's warning (as ``opdwatch info`` prints them), the verdict."""
    from opdwatch.series import token_source_note
    from opdwatch.step_table import steps_line

    live = watched.live
    series = live.series()
    v = run_verdict(watched)
    head = html.Span(f"status {live.status}, {steps_line(live.step_facts().as_dict())}, run id {live.run_id}. ",
                     id="run-steps")
    note = live.step_note()  # the CLI's one warning line about the step table, without the server's path
    warning = html.Div(f"warning: {note}", className="opd-story", id="run-step-note") if note else None
    if v is None:
        return [head, html.Span("verdict: no steps yet", id="run-verdict"), warning]
    episodes = "; ".join(e.describe() + ("" if e.end is not None else ", ongoing") for e in v.episodes)
    return [
        head,
        html.Span(f"verdict: {v.label}", className=f"opd-verdict-{v.kind}", id="run-verdict"),
        html.Span(" — " + "; ".join(v.reasons[:3])),
        html.Div(f"collapse episodes: {episodes}", id="run-episodes") if episodes else None,
        warning,
        html.Div(token_source_note(series)),
    ]


def detector(watched: Watched) -> list[Any]:
    """The online detector's state (replayed here on the recorded steps) and the run's own alerts."""
    state = watched.detector_state
    parts: list[Any] = ["detector (live replay): "]
    if state is None:
        parts.append("no train steps yet")
    else:
        parts.append(html.Span(state.level, className=f"opd-level-{state.level}", id="run-detector-level"))
        parts.append(f" at step {state.step}" + (f" ({state.reason})" if state.reason else ""))
        if state.evidence:
            parts.append(": " + "; ".join(e.describe() for e in state.evidence[:3]))
        parts.append(_story(watched, state.level))
    events = watched.live.events()
    counts = events.filter(pl.col("kind").is_in(ALERT_KINDS)).group_by("kind").len().sort("kind")
    recorded = ", ".join(f"{n} {k}" for k, n in counts.iter_rows()) or "none"
    parts.append(html.Div(f"recorded alerts: {recorded}; last: {event_line(watched.last_alert())}"))
    return parts


def _story(watched: Watched, level: str) -> html.Div | None:
    """The detector and the verdict as one story, shown when they differ in kind (see runs.py)."""
    from opdwatch.verdict import detector_story

    v = run_verdict(watched)
    if v is None:
        return None
    first_warning, first_alarm = detector_history(watched)
    story, differ = detector_story(v, level, first_warning=first_warning, first_alarm=first_alarm)
    return html.Div(story, className="opd-story", id="run-story") if differ else None


def events_table(watched: Watched) -> Any:
    events = watched.live.events().tail(EVENTS_SHOWN).reverse()
    if events.height == 0:
        return html.P("no events recorded", className="opd-meta")
    rows = []
    for ev in events.iter_rows(named=True):
        step = ev["step"]
        cell = dcc.Link(str(step), href=tokens_href(watched.name, step=step)) if step is not None else "-"
        rows.append([cell, ev["kind"], ev["message"][:300]])
    return table(("step", "kind", "message"), rows, id="run-events-table")


@callback(Output("run-nav", "href"), *[Input(i, "clickData") for i in GRAPH_IDS], State("run-name", "data"),
          prevent_initial_call=True)
def open_step(*args: Any) -> str:
    """A click on a point (any figure) opens that step's rollouts."""
    name = args[-1]
    click = dict(zip(GRAPH_IDS, args[:-1], strict=True)).get(ctx.triggered_id)
    step = clicked_step(click)
    if step is None:
        raise PreventUpdate
    return tokens_href(name, step=step, phase="train")


def clicked_step(click: Any) -> int | None:  # noqa: ANN401 - clickData as the browser sent it
    """The step of a plotly click: the first ``customdata`` element (the shared figures put it there),
    else the x value. None for anything that is not a whole step number (a malformed or forged click, a
    fractional x, a value beyond what a browser holds exactly): no step is better than a wrong one."""
    points = click.get("points") if isinstance(click, dict) else None
    if not isinstance(points, list) or not points or not isinstance(points[0], dict):
        return None
    point = points[0]
    custom = point.get("customdata")
    value = custom[0] if isinstance(custom, list) and custom else custom if custom is not None else point.get("x")
    return _step_number(value)


def _step_number(value: Any) -> int | None:  # noqa: ANN401
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        if not value.is_integer():
            return None
        value = int(value)
    elif isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            return None
    if not isinstance(value, int) or abs(value) > MAX_EXACT_STEP:
        return None
    return value
