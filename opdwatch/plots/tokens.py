"""A rollout's tokens as text, each token a box coloured by its advantage (teacher - student log-prob).

Tokens flow left to right in lines of about ``width`` characters, like the text they spell; a newline in
the text starts a new line. Repetitive tokens (``rep_tail | rep_ngram``) get a black outline; the EOS
token is outlined in green. Hover shows the position, token id, both log-probs and the advantage. All
text is HTML-escaped: plotly would otherwise render tags that a model happened to generate.
"""

from __future__ import annotations

import math

import plotly.graph_objects as go
import polars as pl

from opdwatch.plots._style import escape, finish

_REQUIRED = ("position", "text", "advantage")


def fig_token_view(tokens: pl.DataFrame, *, title: str = "", width: int = 80) -> go.Figure:
    """One rollout's token rows (columns ``position``, ``text``, ``advantage`` and, when present,
    ``token_id``, ``student_logp``, ``teacher_logp``, ``rep_tail``, ``rep_ngram``, ``eos``, ``step``)."""
    missing = [c for c in _REQUIRED if c not in tokens.columns]
    if missing:
        raise ValueError(f"fig_token_view: token rows lack columns {missing}")
    rows = tokens.sort("position")
    n = rows.height
    get = {c: (rows[c].to_list() if c in rows.columns else [None] * n)
           for c in ("position", "text", "advantage", "token_id", "student_logp", "teacher_logp", "rep_tail",
                     "rep_ngram", "eos", "step")}
    x0, y, widths, shown = [], [], [], []
    col, line = 0, 0
    for raw, is_eos in zip(get["text"], get["eos"], strict=True):
        piece = "" if raw is None else str(raw)
        label = piece.replace("\n", "\u21b5").replace("\t", "\u2192") or ("EOS" if is_eos else "")
        w = max(2, len(label))  # a one-character token still gets a readable box
        if col > 0 and col + w > width:
            col, line = 0, line + 1
        x0.append(col)
        y.append(line)
        widths.append(w)
        shown.append(escape(label) if label.strip() else "\u00b7" * len(label) or "\u2205")
        col += w
        if "\n" in piece:
            col, line = 0, line + 1
    rep = [bool(a) or bool(b) for a, b in zip(get["rep_tail"], get["rep_ngram"], strict=True)]
    eos = [bool(e) for e in get["eos"]]
    adv = [None if a is None or (isinstance(a, float) and math.isnan(a)) else float(a)
           for a in get["advantage"]]
    finite = [abs(a) for a in adv if a is not None]
    bound = max(finite) if finite else 1.0
    outline = ["#2ca02c" if e else ("#000000" if r else "rgba(0,0,0,0)")
               for r, e in zip(rep, eos, strict=True)]
    line_width = [2.5 if r or e else 0 for r, e in zip(rep, eos, strict=True)]
    custom = [[s, p, t, _fmt(sl), _fmt(tl), _fmt(a), "repetitive" if r else "regular"]
              for s, p, t, sl, tl, a, r in zip(get["step"], get["position"], get["token_id"],
                                               get["student_logp"], get["teacher_logp"], adv, rep, strict=True)]
    fig = go.Figure(go.Bar(
        base=x0, x=widths, y=y, orientation="h", text=shown, textposition="inside", insidetextanchor="middle",
        textangle=0, constraintext="none", width=0.9,
        marker={"color": [0.0 if a is None else a for a in adv], "colorscale": "RdBu", "cmin": -bound,
                "cmax": bound, "colorbar": {"title": "advantage"},
                "line": {"color": outline, "width": line_width}},
        customdata=custom, textfont={"family": "monospace", "size": 11},
        hovertemplate="position %{customdata[1]} (token id %{customdata[2]}, %{customdata[6]})<br>"
                      "student log-prob %{customdata[3]}<br>teacher log-prob %{customdata[4]}<br>"
                      "advantage %{customdata[5]}<extra></extra>",
        showlegend=False,
    ))
    lines = (y[-1] + 1) if y else 1
    fig.update_yaxes(autorange="reversed", visible=False)
    fig.update_xaxes(visible=False, range=[0, width])
    fig.update_layout(uniformtext={"minsize": 8, "mode": "show"}, bargap=0.05)
    rep_share = sum(rep) / n if n else 0.0
    head = escape(title) if title else "Rollout tokens"
    return finish(fig, title=f"{head} ({n} tokens, {rep_share:.0%} repetitive; outline: black = repetitive, "
                  "green = EOS)", height=min(4000, 170 + 26 * lines))  # 150 px of margins and title


def _fmt(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{float(value):.3f}"
