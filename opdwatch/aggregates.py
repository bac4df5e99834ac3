"""Step aggregates (the paper's Figs 2-4) as reducible partial sums.

A step's metrics are means over all of the step's rollouts and tokens on all ranks. Each rank computes
:func:`partials` (sums, counts, maxima and a sum of squares, keyed ``"sum:..."``, ``"n:..."``, ``"max:..."``,
``"sq:..."``); ranks combine them with :func:`merge` (or an all-reduce of the same keys); :func:`finalize`
turns them into the metrics row. They are computed on every token before any thinning, so they stay exact
when token rows are thinned.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

Partials = dict[str, float]


def _add(p: Partials, key: str, values: np.ndarray, mask: np.ndarray | None = None) -> None:
    if mask is not None:
        values = values[mask]
    values = values[np.isfinite(values)] if values.dtype.kind == "f" else values
    p[f"sum:{key}"] = p.get(f"sum:{key}", 0.0) + float(values.sum(dtype=np.float64))
    p[f"n:{key}"] = p.get(f"n:{key}", 0.0) + float(len(values))


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
    rep_token: np.ndarray,         # (N,) bool, rep_ngram | rep_tail
    rep_ngram: np.ndarray,         # (N,) bool
    rep_tail: np.ndarray,          # (N,) bool
    eos: np.ndarray,               # (N,) bool
) -> Partials:
    p: Partials = {}
    _add(p, "rollout/truncation_rate", truncated.astype(np.float64))
    _add(p, "rollout/repetition_rate", repetitive.astype(np.float64))
    _add(p, "rollout/loop_rate", looping.astype(np.float64))
    _add(p, "rollout/mean_length", num_tokens.astype(np.float64))
    _add(p, "rollout/zlib_tail_ratio_mean", tail_ratio.astype(np.float64))
    _add(p, "rollout/accuracy", correct.astype(np.float64))
    p["max:rollout/max_length"] = float(num_tokens.max()) if len(num_tokens) else 0.0
    # Sum of squared lengths, for rollout/length_cv (finalize): a few rollouts starting to loop spread the
    # lengths before they move the mean (in real tiny runs the spread rose 1-2 steps earlier).
    p["sq:rollout/mean_length"] = float((num_tokens.astype(np.float64) ** 2).sum())
    p["sum:rollout/count"] = float(len(num_tokens))
    m = loss_mask
    p["sum:token/count"] = float(m.sum())
    _add(p, "token/repetitive_share", rep_token.astype(np.float64), m)
    _add(p, "token/ngram_repeat_share", rep_ngram.astype(np.float64), m)
    _add(p, "token/tail_share", rep_tail.astype(np.float64), m)
    for key, values in (("token/student_logp_mean", student_logp), ("token/teacher_logp_mean", teacher_logp),
                        ("token/ref_logp_mean", ref_logp)):
        if values is not None:
            _add(p, key, values, m)
    if advantage is not None:
        _add(p, "token/advantage_mean", advantage, m)
        _add(p, "token/adv_repetitive_mean", advantage, m & rep_token)
        _add(p, "token/adv_regular_mean", advantage, m & ~rep_token)
        _add(p, "token/adv_tail_mean", advantage, m & rep_tail)
        # EOS advantage is the precursor: it turns negative just before collapse (the teacher, primed by
        # a repeat, stops wanting to stop). Not loss-masked: some loops mask EOS, we still want to see it.
        _add(p, "token/eos_advantage_mean", advantage, eos)
    return p


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
    if "sq:rollout/mean_length" in p:
        out["rollout/length_cv"] = _cv(p["sum:rollout/mean_length"], p["sq:rollout/mean_length"],
                                       p["n:rollout/mean_length"])
    return out


def _cv(total: float, total_sq: float, n: float) -> float:
    """Coefficient of variation (population sd / mean) from a sum and a sum of squares; NaN if undefined."""
    if n <= 0 or total <= 0:
        return float("nan")
    mean = total / n
    return math.sqrt(max(total_sq / n - mean * mean, 0.0)) / mean
