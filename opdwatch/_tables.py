"""Arrow tables of one recorded batch: per-rollout means and the token rows (after thinning)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from opdwatch.rollout_fields import RolloutFields


def masked_means(offsets: np.ndarray, mask: np.ndarray, s_lp: np.ndarray | None, t_lp: np.ndarray | None,
                  adv: np.ndarray | None, rep: np.ndarray) -> dict[str, np.ndarray]:
    """Per-rollout means over loss-masked tokens (NaN for a rollout with none)."""
    seg = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))[mask]
    counts = np.bincount(seg, minlength=len(offsets) - 1).astype(np.float64)

    def mean(values: np.ndarray | None) -> np.ndarray:
        if values is None:
            return np.full(len(counts), np.nan)
        sums = np.bincount(seg, weights=values[mask].astype(np.float64), minlength=len(counts))
        with np.errstate(invalid="ignore", divide="ignore"):
            return sums / counts

    return {"student_logp_mean": mean(s_lp), "teacher_logp_mean": mean(t_lp), "advantage_mean": mean(adv),
            "repetitive_token_share": mean(rep.astype(np.float64))}


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
