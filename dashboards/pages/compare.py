"""Comparison view (``/compare?runs=A,B``): several runs overlaid on the shared figures, updating live."""

from __future__ import annotations

from typing import Any

import dash
from dash import Input, Output, State, callback, dcc, html
from dash.exceptions import PreventUpdate
from flask import current_app

from dashboards.components import graph, run_href
from dashboards.state import registry
from opdwatch.errors import OpdwatchError
from opdwatch.plots import (
    fig_logprobs_length,
    fig_repetitive_advantage,
    fig_synchronised_spikes,
    fig_truncation_repetition,
)

dash.register_page(__name__, path="/compare", name="Compare", title="opdwatch: compare", order=2)

FIGURES = (
    ("compare-fig-trunc", fig_truncation_repetition),
    ("compare-fig-logp", fig_logprobs_length),
    ("compare-fig-repadv", fig_repetitive_advantage),
    ("compare-fig-spikes", fig_synchronised_spikes),
)
MAX_RUNS = 8  # the palette's colours; more overlaid runs cannot be told apart


def layout(runs: str | None = None, **_query: str) -> html.Div:
    names = registry().names()
    wanted = [n for n in (runs or "").split(",") if n in names][:MAX_RUNS]
    return html.Div([
        html.H2("Compare runs"),
        dcc.Dropdown(id="compare-runs", options=names, value=wanted, multi=True,
                     placeholder="choose runs to overlay"),
        html.Div(id="compare-links", className="opd-meta"),
        html.Div(id="compare-error", className="opd-error"),
        *[graph(i) for i, _ in FIGURES],
        dcc.Store(id="compare-version", data=None),
        dcc.Interval(id="compare-tick", interval=current_app.config.get("OPDWATCH_REFRESH_MS", 2000)),
    ], className="opd-page")


@callback(*[Output(i, "figure") for i, _ in FIGURES], Output("compare-links", "children"),
          Output("compare-error", "children"), Output("compare-version", "data"),
          Input("compare-runs", "value"), Input("compare-tick", "n_intervals"), State("compare-version", "data"),
          running=[(Output("compare-tick", "disabled"), True, False)])  # no pile-up (see pages/run.py)
def refresh(names: list[str] | None, _n: int | None, shown: list | None) -> tuple[Any, ...]:
    names = list(names or [])[:MAX_RUNS]
    reg = registry()
    watched, errors = [], []
    for name in names:
        try:
            watched.append(reg.get(name))  # names come from the browser: resolve_run checks every one
        except OpdwatchError as exc:
            errors.append(str(exc))
    version = [[w.name, w.version] for w in watched]
    if version == shown:
        raise PreventUpdate
    series = {w.name: w.live.series() for w in watched}
    events = {w.name: w.live.events() for w in watched}
    figures = [fn(series, events=events) for _, fn in FIGURES]
    links = [item for w in watched for item in (dcc.Link(w.name, href=run_href(w.name)), " ")]
    return (*figures, links, "; ".join(errors), version)
