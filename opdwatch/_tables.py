"""Arrow tables of one recorded batch: per-rollout means and the token rows (after thinning)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from opdwatch.metric_defs import TOKEN_METRICS, Columns
from opdwatch.rollout_fields import RolloutFields

# Token means the rollouts table keeps per rollout, with their masks (metric_defs.MetricDef.rollout_column).
_PER_ROLLOUT = tuple(d for d in TOKEN_METRICS if d.rollout_column is not None)


def masked_means(offsets: np.ndarray, tokens: Columns) -> dict[str, np.ndarray]:
    """Per-rollout values of the token means that have a rollouts-table column, defined as the step
    metric (same source, mask, finite values only) over each rollout's tokens: (R,) float64, NaN for a
    rollout with no such token or where the source was not given. ``offsets`` (R + 1,)."""
    rollouts = len(offsets) - 1
    rollout_of = np.repeat(np.arange(rollouts), np.diff(offsets))  # (N,) rollout of each token
    # Per mask: the kept tokens' rollouts (K,) and counts per rollout (R,), shared by the metrics over that
    # mask whose values are all finite (the usual case); a source with NaN/inf drops those tokens on its own.
    shared: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    out: dict[str, np.ndarray] = {}
    for d in _PER_ROLLOUT:
        values = tokens(d.source)  # (N,) or None
        if values is None:
            out[d.rollout_column] = np.full(rollouts, np.nan)
            continue
        keep = tokens.mask(d.mask)  # (N,) bool
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            keep = keep & np.isfinite(values)  # this source's NaN/inf tokens drop out on their own
            seg, counts = _segments(rollout_of[keep], rollouts)
        else:
            if d.mask.name not in shared:
                shared[d.mask.name] = _segments(rollout_of[keep], rollouts)
            seg, counts = shared[d.mask.name]
        sums = np.bincount(seg, weights=values[keep].astype(np.float64), minlength=rollouts)  # (R,)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[d.rollout_column] = sums / counts
    return out


def _segments(seg: np.ndarray, rollouts: int) -> tuple[np.ndarray, np.ndarray]:
    """The kept tokens' rollouts (K,) and the count of kept tokens per rollout (R,) float64."""
    return seg, np.bincount(seg, minlength=rollouts).astype(np.float64)


def token_table(step: int, rank: int, rollout_idx: np.ndarray, lens: np.ndarray, offsets: np.ndarray,
                 keep: np.ndarray, ids: np.ndarray, s_lp: np.ndarray | None, t_lp: np.ndarray | None,
                 r_lp: np.ndarray | None, adv: np.ndarray | None, mask: np.ndarray, special: np.ndarray,
                 f: RolloutFields, char_ends: np.ndarray | None) -> pa.Table:
    rows = np.repeat(keep, lens)  # (N,) token belongs to a kept rollout
    n = int(rows.sum())
    nan = np.full(len(ids), np.nan, dtype=np.float32)
    position = (np.arange(len(ids)) - np.repeat(offsets[:-1], lens)).astype(np.int32)

    def sel(a: np.ndarray | None) -> np.ndarray:
        return (nan if a is None else a)[rows]

    return pa.table({
        "step": pa.array(np.full(n, step, dtype=np.int64)),
        "rank": pa.array(np.full(n, rank, dtype=np.int32)),
        "rollout": pa.array(np.repeat(rollout_idx, lens)[rows]),
        "position": pa.array(position[rows]),
        "token_id": pa.array(ids[rows].astype(np.int32)),
        "char_end": (pa.array(char_ends[rows].astype(np.int32)) if char_ends is not None
                     else pa.nulls(n, pa.int32())),
        "student_logp": pa.array(sel(s_lp)),
        "teacher_logp": pa.array(sel(t_lp)),
        "ref_logp": pa.array(sel(r_lp)),
        "advantage": pa.array(sel(adv)),
        "loss_mask": pa.array(mask[rows]),
        "special": pa.array(special[rows]),
        "eos": pa.array(f.eos[rows]),
        "rep_tail": pa.array(f.rep_tail[rows]),
        "rep_ngram": pa.array(f.rep_ngram[rows]),
    })
