"""Step aggregates (the paper's Figs 2-4) as reducible partial sums.

A step's metrics are means over all of the step's rollouts and tokens on all ranks. Each rank computes
:func:`partials` (sums, counts, maxima and a sum of squares, keyed ``"sum:..."``, ``"n:..."``, ``"max:..."``,
``"sq:..."``); ranks combine them with :func:`merge` (or an all-reduce of the same keys); :func:`finalize`
turns them into the metrics row. They are computed on every token before any thinning, so they stay exact
when token rows are thinned. Which metrics, over which rows and how reduced: :mod:`opdwatch.metric_defs`
(the analysis builds its polars expressions from the same table).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from opdwatch.metric_defs import METRICS, Columns, MetricDef

Partials = dict[str, float]
_CV = tuple(d for d in METRICS if d.reduction == "cv")


def partials(
    *,
    num_tokens: np.ndarray,        # (R,) response tokens per rollout
    truncated: np.ndarray,         # (R,) bool
    repetitive: np.ndarray,        # (R,) bool, rollout-level zlib rule
    looping: np.ndarray,           # (R,) bool, ends in an n-gram loop
    tail_ratio: np.ndarray,        # (R,) float
    correct: np.ndarray,           # (R,) float: 1, 0 or NaN (unknown)
    student_logp: np.ndarray | None,  # (N,) float, per token; None when not given
    teacher_logp: np.ndarray | None,  # (N,)
    ref_logp: np.ndarray | None,      # (N,)
    advantage: np.ndarray | None,     # (N,)
    loss_mask: np.ndarray,         # (N,) bool
    rep_token: np.ndarray | None = None,  # (N,) bool, rep_ngram | rep_tail; derived from them when None
    rep_ngram: np.ndarray,         # (N,) bool
    rep_tail: np.ndarray,          # (N,) bool
    eos: np.ndarray,               # (N,) bool
) -> Partials:
    rollouts = Columns({"num_tokens": num_tokens, "truncated": truncated, "repetitive": repetitive,
                        "looping": looping, "zlib_tail_ratio": tail_ratio, "correct": correct}, len(num_tokens))
    stored = {"student_logp": student_logp, "teacher_logp": teacher_logp, "ref_logp": ref_logp,
              "advantage": advantage, "loss_mask": loss_mask, "rep_ngram": rep_ngram, "rep_tail": rep_tail,
              "eos": eos}
    if rep_token is not None:
        stored["rep"] = rep_token
    return partials_of(rollouts, Columns(stored, len(loss_mask)))


def partials_of(rollouts: Columns, tokens: Columns) -> Partials:
    """:func:`partials` of every metric in :data:`opdwatch.metric_defs.METRICS` from columns by name."""
    p: Partials = {}
    for d in METRICS:
        _accumulate(p, d, rollouts if d.level == "rollout" else tokens)
    return p


def _accumulate(p: Partials, d: MetricDef, cols: Columns) -> None:
    mask = cols.mask(d.mask)  # (rows,) bool or None
    if d.reduction == "count":
        p[f"sum:{d.key}"] = float(cols.rows if mask is None else mask.sum())
        return
    values = cols(d.source)  # (rows,)
    if values is None:  # e.g. no ref log-probs given: the metric is left out, not NaN
        return
    if mask is not None:
        values = values[mask]
    if values.dtype.kind == "f":
        values = values[np.isfinite(values)]
    name = d.partial_key
    if d.reduction == "mean":
        p[f"sum:{name}"] = float(values.sum(dtype=np.float64))
        p[f"n:{name}"] = float(len(values))
    elif d.reduction == "max":
        p[f"max:{name}"] = float(values.max()) if len(values) else 0.0
    else:  # cv: its sum: and n: are those of the mean it names (moments_of)
        p[f"sq:{name}"] = float((values.astype(np.float64) ** 2).sum())


def merge(parts: Iterable[Partials]) -> Partials:
    out: Partials = {}
    for part in parts:
        for key, value in part.items():
            if key.startswith("max:"):
                out[key] = max(out.get(key, float("-inf")), value)
            else:
                out[key] = out.get(key, 0.0) + value
    return out


def finalize(p: Partials) -> dict[str, float]:
    """Metrics row from partials: means (NaN where nothing was counted), counts, maxima and the length cv."""
    out: dict[str, float] = {}
    for key, value in p.items():
        kind, name = key.split(":", 1)
        if kind == "sum" and f"n:{name}" in p:
            n = p[f"n:{name}"]
            out[name] = value / n if n > 0 else float("nan")
        elif kind in ("sum", "max"):
            out[name] = value
    for d in _CV:
        name = d.partial_key
        if f"sq:{name}" in p:
            out[d.key] = _cv(p[f"sum:{name}"], p[f"sq:{name}"], p[f"n:{name}"])
    return out


def _cv(total: float, total_sq: float, n: float) -> float:
    """Coefficient of variation (population sd / mean) from a sum and a sum of squares; NaN if undefined."""
    if n <= 0 or total <= 0:
        return float("nan")
    mean = total / n
    return math.sqrt(max(total_sq / n - mean * mean, 0.0)) / mean
