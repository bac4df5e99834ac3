"""Comparison view (``/compare?runs=A,B``): several runs overlaid on the shared figures, updating live.

Run names come from the browser (the URL, the dropdown's value) and may be anything a request can carry:
what is not a list of names is ignored with a one-line message, and a run that cannot be opened or read
is named in the error line while the others are drawn.
"""

from __future__ import annotations

import logging
from typing import Any

import dash
from dash import Input, Output, State, callback, dcc, html
from dash.exceptions import PreventUpdate
from flask import current_app

from opdwatch.dashboards.components import graph, run_href, short_error
from opdwatch.dashboards.state import registry
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
log = logging.getLogger(__name__)


def layout(runs: str | list[str] | None = None, **_query: str) -> html.Div:
    names = registry().names()
    # ``?runs=a&runs=b`` reaches the page as a list: every value is a comma-separated list of names
    given = runs if isinstance(runs, list) else [runs]
    wanted = list(dict.fromkeys(n for r in given if isinstance(r, str) for n in r.split(",") if n in names))
    wanted = wanted[:MAX_RUNS]
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
def refresh(value: Any, _n: int | None, shown: Any) -> tuple[Any, ...]:  # noqa: ANN401 - from the browser
    names, errors = selected_names(value)
    reg = registry()
    watched, series, events = [], {}, {}
    for name in names:
        try:
            w = reg.get(name)  # names come from the browser: resolve_run checks every one
            if w.name in series:
                continue  # the same run twice (an alias): one overlay
            series[w.name], events[w.name] = w.live.series(), w.live.events()
            watched.append(w)
        except OpdwatchError as exc:
            errors.append(short_error(exc))
        except Exception as exc:  # noqa: BLE001 - one unreadable run must not blank the others
            log.warning("compare: %s could not be read", name, exc_info=True)
            errors.append(f"{name}: {short_error(exc)}")
    version = [[w.name, w.version] for w in watched]
    if version == shown:
        raise PreventUpdate
    figures = [fn(series, events=events) for _, fn in FIGURES]
    links = [item for w in watched for item in (dcc.Link(w.name, href=run_href(w.name)), " ")]
    return (*figures, links, "; ".join(errors), version)


def selected_names(value: Any) -> tuple[list[str], list[str]]:  # noqa: ANN401 - from the browser
    """The run names in the dropdown's value (a list of names; one name is taken as such), at most
    MAX_RUNS, and a message for whatever was not a name."""
    if value is None:
        return [], []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return [], [f"ignored a run selection of type {type(value).__name__} (expected a list of run names)"]
    names = [v for v in value if isinstance(v, str)]
    dropped = len(value) - len(names)
    errors = [f"ignored {dropped} selected value(s) that are not run names"] if dropped else []
    return names[:MAX_RUNS], errors
