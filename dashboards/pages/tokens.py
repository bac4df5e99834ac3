"""Token drill-down (``/tokens?run=NAME&step=S&phase=train&rank=R&rollout=I&order=length``).

Lists one step's rollouts, longest / most repetitive / lowest-advantage first, and shows the selected one
(the first, unless chosen) as its tokens coloured by advantage (``fig_token_view``: repetitive tokens
outlined, student/teacher log-probs on hover) and as plain text, with the same prompt's rollouts at other
steps one click away. Everything is in the URL, so a view can be shared; only this step's files are read.
Model text is passed to components as children or to the shared figure (which escapes it), never as HTML.
"""

from __future__ import annotations

from typing import Any

import dash
import polars as pl
from dash import Input, Output, State, callback, dcc, html
from dash.exceptions import PreventUpdate

from opdwatch.dashboards.components import fmt, query_value, refused, run_href, table, tokens_href
from opdwatch.dashboards.state import Watched, registry
from opdwatch.errors import OpdwatchError
from opdwatch.live import ROLLOUT_ORDERS
from opdwatch.plots import fig_token_view

dash.register_page(__name__, path="/tokens", name="Tokens", title="opdwatch: tokens", order=3)

ORDER_LABELS = {"length": "longest first", "repetition": "most repetitive first",
                "advantage": "lowest advantage first"}
LISTED = 100  # rollouts listed per step (the ordering puts the ones that matter on top)
ROLLOUT_COLUMNS = ("rollout", "rank", "prompt", "sample", "tokens", "finish", "repetitive", "seq-rep-n",
                   "mean adv.", "rep. share", "correct")


def layout(run: str | None = None, step: str | None = None, phase: str | None = None, rank: str | None = None,
           rollout: str | None = None, order: str | None = None, **_query: str) -> html.Div:
    try:
        run = query_value(run, "run")
        if not run:
            return refused("no run given: open one from the run list", id="tokens-refused")
        watched = registry().get(run)
        q = _parse(step, phase, rank, rollout, order)
    except OpdwatchError as exc:
        return refused(str(exc), id="tokens-refused")
    run = watched.name  # the canonical name, whichever alias the URL used
    steps = watched.live.rollout_steps()
    if not steps:
        return html.Div([html.H2(f"Rollouts of {run}"), html.P("no rollouts recorded yet")], className="opd-page")
    sel_step = q["step"] if q["step"] in steps else steps[-1]
    rollouts = watched.live.step_rollouts(sel_step, phase=q["phase"], order=q["order"])
    return html.Div([
        html.H2(f"Rollouts of {run}", id="tokens-title"),
        html.Div(dcc.Link("back to the run", href=run_href(run)), className="opd-meta"),
        _controls(steps, sel_step, q["phase"], q["order"]),
        dcc.Store(id="tokens-run", data=run),
        dcc.Location(id="tokens-nav", refresh="callback-nav"),
        html.H4(f"step {sel_step}, {q['phase']}: {rollouts.height} rollouts ({ORDER_LABELS[q['order']]})"),
        html.Div(_rollout_list(run, rollouts, sel_step, q), className="opd-scroll"),
        html.Div(_selected(watched, rollouts, sel_step, q), id="tokens-selected"),
    ], className="opd-page")


def _parse(step: str | None, phase: str | None, rank: str | None, rollout: str | None,
           order: str | None) -> dict[str, Any]:
    def integer(value: str | None, name: str) -> int | None:
        value = query_value(value, name)
        if value in (None, ""):
            return None
        try:
            return int(value)
        except ValueError:
            raise OpdwatchError(f"{name} must be an integer, got {value!r}") from None

    # a key given twice reaches the page as a list: refused before it is compared with anything
    phase = query_value(phase, "phase") or "train"
    if phase not in ("train", "val"):
        raise OpdwatchError(f"phase must be train or val, got {phase!r}")
    order = query_value(order, "order") or "length"
    if order not in ROLLOUT_ORDERS:
        raise OpdwatchError(f"order must be one of {sorted(ROLLOUT_ORDERS)}, got {order!r}")
    return {"step": integer(step, "step"), "phase": phase, "rank": integer(rank, "rank"),
            "rollout": integer(rollout, "rollout"), "order": order}


def _controls(steps: list[int], step: int, phase: str, order: str) -> html.Div:
    return html.Div([
        html.Div(["step", dcc.Dropdown(id="tokens-step", options=[{"label": str(s), "value": s}
                                                                   for s in reversed(steps)],
                                       value=step, clearable=False)]),
        html.Div(["phase", dcc.RadioItems(id="tokens-phase", options=["train", "val"], value=phase, inline=True)]),
        html.Div(["order", dcc.RadioItems(id="tokens-order", value=order, inline=True,
                                          options=[{"label": v, "value": k} for k, v in ORDER_LABELS.items()])]),
    ], className="opd-controls")


def _rollout_list(run: str, rollouts: pl.DataFrame, step: int, q: dict[str, Any]) -> Any:
    if rollouts.height == 0:
        return html.P(f"no {q['phase']} rollouts at this step", className="opd-meta")
    rows = []
    for r in rollouts.head(LISTED).iter_rows(named=True):
        link = dcc.Link(str(r["rollout"]), id=f"tokens-pick-{r['rank']}-{r['rollout']}",
                        href=tokens_href(run, step=step, phase=q["phase"], rank=r["rank"], rollout=r["rollout"],
                                         order=q["order"]))
        rows.append([link, r["rank"], r["prompt_id"], r["sample_index"], r["num_tokens"], r["finish_reason"],
                     r["repetitive"], r["seq_rep_n"], r["advantage_mean"], r["repetitive_token_share"],
                     r["correct"]])
    return table(ROLLOUT_COLUMNS, rows, id="tokens-list")


def _selected(watched: Watched, rollouts: pl.DataFrame, step: int, q: dict[str, Any]) -> list[Any]:
    if rollouts.height == 0:
        return []
    chosen = rollouts
    if q["rollout"] is not None:
        chosen = rollouts.filter(pl.col("rollout") == q["rollout"])
        if q["rank"] is not None:
            chosen = chosen.filter(pl.col("rank") == q["rank"])
    if chosen.height == 0:
        return [html.P(f"no rollout {q['rollout']} at step {step}", className="opd-error")]
    r = chosen.row(0, named=True)
    title = f"step {step}, rank {r['rank']}, rollout {r['rollout']}, prompt {r['prompt_id']}"
    view: Any
    try:
        tokens = watched.live.rollout_tokens(step, rank=r["rank"], phase=q["phase"], rollout=r["rollout"])
        view = dcc.Graph(id="tokens-figure", figure=fig_token_view(tokens, title=title),
                         config={"displaylogo": False})
    except OpdwatchError as exc:  # token rows thinned away, or none without log-probs
        view = html.P(str(exc), className="opd-meta", id="tokens-figure-missing")
    return [
        html.H4(title),
        html.Div(f"{r['num_tokens']} tokens, finished by {r['finish_reason']}, repetitive {fmt(r['repetitive'])}, "
                 f"seq-rep-n {fmt(r['seq_rep_n'])}, loop from token {fmt(r['loop_onset'])}, mean advantage "
                 f"{fmt(r['advantage_mean'])}, student log-prob {fmt(r['student_logp_mean'])}, teacher log-prob "
                 f"{fmt(r['teacher_logp_mean'])}, correct {fmt(r['correct'])}", className="opd-meta"),
        view,
        html.H4("Prompt"),
        html.Pre(r["prompt_text"] or "(not recorded)", className="opd-text", id="tokens-prompt"),
        html.H4("Response text"),
        html.Pre(r["text"] or "", className="opd-text", id="tokens-text"),
        html.H4("The same prompt at other steps"),
        html.Div(_history(watched, r, q), className="opd-scroll"),
    ]


def _history(watched: Watched, r: dict[str, Any], q: dict[str, Any]) -> Any:
    if r["prompt_id"] is None:
        return html.P("no prompt id recorded", className="opd-meta")
    hist = watched.live.prompt_history(r["prompt_id"], phase=q["phase"])
    rows = []
    for h in hist.iter_rows(named=True):
        here = h["step"] == r["step"] and h["rank"] == r["rank"] and h["rollout"] == r["rollout"]
        link = dcc.Link(f"step {h['step']} #{h['rollout']}", href=tokens_href(
            watched.name, step=h["step"], phase=q["phase"], rank=h["rank"], rollout=h["rollout"], order=q["order"]))
        rows.append([html.B("this one") if here else link, h["sample_index"], h["num_tokens"], h["finish_reason"],
                     h["repetitive"], h["advantage_mean"], h["correct"]])
    return table(("rollout", "sample", "tokens", "finish", "repetitive", "mean adv.", "correct"), rows,
                 id="tokens-history")


@callback(Output("tokens-nav", "href"), Input("tokens-step", "value"), Input("tokens-phase", "value"),
          Input("tokens-order", "value"), State("tokens-run", "data"), prevent_initial_call=True)
def choose(step: int | None, phase: str, order: str, run: str) -> str:
    if step is None:
        raise PreventUpdate
    return tokens_href(run, step=step, phase=phase, order=order)
