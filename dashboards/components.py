"""Small layout pieces shared by the pages: links with query strings, tables, number formatting.

All text goes into Dash components as children (never as raw HTML), so Dash escapes it: run names,
event messages and model-generated text are shown as text whatever they contain.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlencode

from dash import dcc, html

from opdwatch.errors import OpdwatchError

REFRESH_MS = 2000  # default live-update period of the run and compare views
ERROR_CHARS = 200  # a run's error as shown in a list: one short line


def href(path: str, **query: Any) -> str:
    """``path?key=value...`` with values URL-encoded (None values left out)."""
    clean = {k: v for k, v in query.items() if v is not None}
    return f"{path}?{urlencode(clean)}" if clean else path


def run_href(name: str) -> str:
    return href("/run", run=name)


def tokens_href(name: str, *, step: int | None = None, phase: str | None = None, rank: int | None = None,
                rollout: int | None = None, order: str | None = None) -> str:
    return href("/tokens", run=name, step=step, phase=phase, rank=rank, rollout=rollout, order=order)


def fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]], *, id: str | None = None,  # noqa: A002
          class_name: str = "opd-table") -> html.Table:
    """A plain HTML table; a cell may be a component (a link) or any value (formatted as text)."""
    body = [html.Tr([html.Td(c if hasattr(c, "to_plotly_json") else fmt(c)) for c in row]) for row in rows]
    kwargs = {"id": id} if id else {}
    return html.Table([html.Thead(html.Tr([html.Th(c) for c in columns])), html.Tbody(body)],
                      className=class_name, **kwargs)


def refused(message: str, *, id: str) -> html.Div:  # noqa: A002
    """What a page shows instead of a run it may not open (outside the root, not a run, missing)."""
    return html.Div([html.H3("Cannot open this run"), html.P(message, className="opd-error"),
                     dcc.Link("back to the run list", href="/")], id=id)


def event_line(event: dict[str, Any] | None) -> str:
    if not event:
        return "-"
    step = "" if event.get("step") is None else f"step {event['step']}: "
    return f"{step}{event['kind']}: {event['message']}"[:200]


def graph(id: str, figure: Any = None) -> dcc.Graph:  # noqa: A002
    return dcc.Graph(id=id, figure=figure or {}, config={"displaylogo": False},
                     className="opd-graph")


def query_value(value: Any, key: str) -> str | None:
    """One URL query value as text. Dash hands a key given twice (``?step=1&step=2``) to the page as a
    list, and a callback may be sent anything: both are refused with a one-line OpdwatchError."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        raise OpdwatchError(f"{key} is given {len(value)} times in the URL")
    raise OpdwatchError(f"{key} must be text, got {type(value).__name__}")


def short_error(exc: BaseException) -> str:
    """An exception as one short line for a table cell: the message of an OpdwatchError, else the
    exception type and the first line of its message (the full traceback goes to the server log)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if not isinstance(exc, OpdwatchError):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 1] + "\u2026"


def detector_history(watched: Any) -> tuple[int | None, int | None]:  # noqa: ANN401 - opdwatch.dashboards.state.Watched
    """First warning and first alarm of the dashboard's detector on a watched run: the run list and run
    page tell when it fired beside the verdict (:func:`opdwatch.verdict.detector_story`)."""
    return watched.first_warning, watched.first_alarm
