"""Derived per-rollout and per-token fields of one batch, shared by the recorder and the tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from opdwatch import metrics

if TYPE_CHECKING:
    from opdwatch.recorder import RecorderSettings


@dataclass(frozen=True)
class RolloutFields:
    truncated: np.ndarray    # (R,) bool: finish_reason == "length"
    tail_ratio: np.ndarray   # (R,) float: zlib ratio of the last tail_window characters
    repetitive: np.ndarray   # (R,) bool: metrics.is_repetitive
    seq_rep: np.ndarray      # (R,) float: seq-rep-n with n = ngram_n
    loop_onset: np.ndarray   # (R,) int: start of the trailing n-gram loop, -1 if none
    rep_ngram: np.ndarray    # (N,) bool
    rep_tail: np.ndarray     # (N,) bool
    eos: np.ndarray          # (N,) bool: the final token of a rollout that stopped on EOS


def derive_fields(ids: np.ndarray, offsets: np.ndarray, texts: list[str], reasons: list[str],
                  char_ends: np.ndarray | None, settings: RecorderSettings,
                  eos_ids: np.ndarray) -> RolloutFields:
    """Compute every derived field for R rollouts whose N tokens are ``ids`` in CSR layout (``offsets``)."""
    s = settings
    count = len(offsets) - 1
    lens = np.diff(offsets)
    truncated = np.array([r == "length" for r in reasons], dtype=bool)
    tail_ratio = np.array([metrics.zlib_tail_ratio(t, s.tail_window) for t in texts], dtype=np.float64)
    repetitive = np.array([len(t) >= s.tail_window for t in texts], dtype=bool) & (tail_ratio < s.tail_threshold)
    rep_ngram = metrics.ngram_repeat_flags(ids, s.ngram_n, offsets)
    rep_tail = np.zeros(len(ids), dtype=bool)
    for r in np.flatnonzero(repetitive):  # only repetitive rollouts have a flagged tail
        lo, hi = offsets[r], offsets[r + 1]
        ends = char_ends[lo:hi] if char_ends is not None else metrics.proportional_char_ends(hi - lo, len(texts[r]))
        rep_tail[lo:hi] = metrics.tail_flags(ends, len(texts[r]), s.tail_window)
    # seq-rep-n from the repeat flags: repeated n-grams / n-grams in the rollout.
    seg = np.repeat(np.arange(count), lens)
    rep_counts = np.bincount(seg, weights=rep_ngram, minlength=count).astype(np.int64)
    ngrams = lens - s.ngram_n + 1
    seq_rep = np.where(ngrams > 0, rep_counts / np.maximum(ngrams, 1), 0.0)
    loop_onset = np.full(count, -1, dtype=np.int64)
    for r in np.flatnonzero(rep_counts >= s.loop_min_run):
        onset = metrics.loop_onset(rep_ngram[offsets[r]:offsets[r + 1]], s.loop_min_run)
        loop_onset[r] = -1 if onset is None else onset
    eos = np.zeros(len(ids), dtype=bool)
    last = offsets[1:] - 1
    stopped = (~truncated) & (lens > 0)
    eos[last[stopped]] = np.isin(ids[last[stopped]], eos_ids) if len(eos_ids) else True
    return RolloutFields(truncated, tail_ratio, repetitive, seq_rep, loop_onset, rep_ngram, rep_tail, eos)
