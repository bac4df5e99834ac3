"""OPD health metrics as pure functions.

Rollout-level (text): :func:`zlib_tail_ratio`, :func:`is_repetitive`, :func:`truncation_rate`,
:func:`repetition_rate`. Token-level (token ids): :func:`ngram_repeat_flags`, :func:`tail_flags`,
:func:`seq_rep_n`, :func:`loop_onset`.

Defaults. The paper's window L and threshold tau were lost in extraction (see shared seeds README).
``DEFAULT_TAIL_WINDOW = 10_000`` and ``DEFAULT_TAIL_THRESHOLD = 0.1`` are the values of the one public
implementation that matches the paper's rule (slime: ``len(tail) / len(zlib(tail)) > 10`` on the last
10,000 characters), i.e. flag only tails that compress more than 10x. They suit 4k-16k-token reasoning
rollouts. Rollouts shorter than the window are never flagged, so short-budget runs must lower both:
zlib adds ~8 bytes of framing, so on a 64-character tail ordinary text compresses to 0.85-1.1 and a
verbatim loop to ~0.3; the CPU demo uses window 64, threshold 0.5 (measured on its golden texts >= 0.89).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import polars as pl

DEFAULT_TAIL_WINDOW = 10_000
DEFAULT_TAIL_THRESHOLD = 0.1
DEFAULT_NGRAM_N = 5
ZLIB_LEVEL = 6  # zlib's default; fixed so that ratios are comparable across runs

# Odd 64-bit multipliers for the polynomial n-gram hash (see ngram_repeat_flags).
_HASH_MULT = np.uint64(0x9E3779B97F4A7C15)
_HASH_ROLLOUT = np.uint64(0xC2B2AE3D27D4EB4F)


def zlib_tail_ratio(text: str, window: int) -> float:
    """Compressed bytes / raw bytes of the last ``window`` characters of ``text`` (UTF-8).

    Lower means more repetitive. An empty tail has ratio 1.0 (nothing to compress, nothing repeats).
    """
    if window <= 0:
        raise ValueError(f"window must be positive, got {window}")
    raw = text[-window:].encode("utf-8")
    if not raw:
        return 1.0
    return len(zlib.compress(raw, ZLIB_LEVEL)) / len(raw)


def is_repetitive(text: str, window: int = DEFAULT_TAIL_WINDOW, threshold: float = DEFAULT_TAIL_THRESHOLD) -> bool:
    """The paper's rule: the rollout is at least ``window`` characters long and its tail ratio is below
    ``threshold``."""
    return len(text) >= window and zlib_tail_ratio(text, window) < threshold


def truncation_rate(finish_reasons: Sequence[str]) -> float:
    """Fraction of rollouts that ended because the budget ran out (``"length"``), not by EOS.

    NaN for an empty batch (no evidence either way)."""
    if len(finish_reasons) == 0:
        return float("nan")
    return sum(r == "length" for r in finish_reasons) / len(finish_reasons)


def repetition_rate(texts: Sequence[str], window: int = DEFAULT_TAIL_WINDOW,
                    threshold: float = DEFAULT_TAIL_THRESHOLD) -> float:
    """Fraction of rollouts that :func:`is_repetitive` flags. NaN for an empty batch."""
    if len(texts) == 0:
        return float("nan")
    return sum(is_repetitive(t, window, threshold) for t in texts) / len(texts)


def _ngram_keys(token_ids: np.ndarray, rollout_index: np.ndarray, n: int) -> np.ndarray:
    """uint64 key per position t >= n-1: hash of (rollout, tokens t-n+1..t). Positions t < n-1 get
    distinct dummy keys so they never match."""
    ids = token_ids.astype(np.uint64, copy=False)
    key = rollout_index.astype(np.uint64) * _HASH_ROLLOUT
    h = np.zeros(len(ids), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):  # h[t] = sum_k ids[t-k] * M^(k+1)  (wrapping uint64 arithmetic)
            shifted = np.zeros_like(ids)
            if k < len(ids):  # (a batch shorter than n: ids[:len - k] would wrap to a non-empty slice)
                shifted[k:] = ids[: len(ids) - k] + np.uint64(1)
            h = (h + shifted) * _HASH_MULT
        h ^= key
    return h


def ngram_repeat_flags(token_ids: np.ndarray, n: int = DEFAULT_NGRAM_N,
                       offsets: np.ndarray | None = None) -> np.ndarray:
    """True at token t when the n-gram ending at t occurred earlier in the same rollout.

    Args:
        token_ids: (N,) int, the tokens of one rollout, or of many rollouts concatenated.
        n: n-gram length (>= 1). The first n-1 tokens of a rollout are never flagged.
        offsets: (R+1,) int start offsets of each rollout in ``token_ids`` (CSR layout); None means
            one rollout.
    Returns:
        (N,) bool.

    Vectorised over all rollouts at once with a 64-bit polynomial hash of each n-gram; a false
    match needs a 64-bit collision (about N^2 / 2^65 expected, < 1e-7 at 1e6 tokens).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    token_ids = np.asarray(token_ids)
    total = len(token_ids)
    if offsets is None:
        offsets = np.array([0, total], dtype=np.int64)
    offsets = np.asarray(offsets, dtype=np.int64)
    lengths = np.diff(offsets)
    rollout = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    pos = np.arange(total, dtype=np.int64) - np.repeat(offsets[:-1], lengths)
    if total == 0:
        return np.zeros(0, dtype=bool)
    # Hash each window of n tokens; positions whose window crosses a rollout start are invalid.
    keys = _ngram_keys(token_ids, rollout, n)
    valid = pos >= n - 1
    flags = np.zeros(total, dtype=bool)
    idx = np.flatnonzero(valid)
    if len(idx) == 0:
        return flags
    # Hash-based first-occurrence test (polars, O(N)); np.unique's sort was 3x slower at 1M tokens.
    flags[idx] = ~pl.Series(keys[idx]).is_first_distinct().to_numpy()
    return flags


def seq_rep_n(token_ids: np.ndarray, n: int = 4) -> float:
    """Welleck et al.'s seq-rep-n of one rollout: 1 - distinct n-grams / n-grams. 0.0 when the rollout
    has fewer than n tokens."""
    token_ids = np.asarray(token_ids)
    count = len(token_ids) - n + 1
    if count <= 0:
        return 0.0
    return float(ngram_repeat_flags(token_ids, n).sum()) / count


def tail_flags(char_ends: np.ndarray, text_length: int, window: int) -> np.ndarray:
    """True for tokens that lie (at least partly) in the last ``window`` characters of the text.

    Args:
        char_ends: (T,) end character offset of each token in the decoded text.
        text_length: length of the decoded text in characters.
    The caller applies this only to rollouts that :func:`is_repetitive` flags ("token lies in the
    flagged repetitive tail").
    """
    return np.asarray(char_ends) > text_length - window


def proportional_char_ends(num_tokens: int, text_length: int) -> np.ndarray:
    """Estimated end offsets when the tokenizer's offsets are unknown: characters spread evenly over
    tokens. Exact for one-character tokens; otherwise off by at most a token's width at the tail edge."""
    if num_tokens == 0:
        return np.zeros(0, dtype=np.int64)
    return np.ceil(np.arange(1, num_tokens + 1) * (text_length / num_tokens)).astype(np.int64)


def loop_onset(repeat_flags: np.ndarray, min_run: int) -> int | None:
    """Start position of the trailing run of n-gram repeats, if that run is at least ``min_run`` tokens.

    A rollout that has fallen into a loop ends in an unbroken run of repeated n-grams; its start is the
    loop onset. Visible in the token records before the budget runs out, so the detector can count
    looping rollouts that have not been truncated yet. None when the rollout does not end in a loop.
    """
    flags = np.asarray(repeat_flags, dtype=bool)
    if len(flags) == 0 or not flags[-1]:
        return None
    not_rep = np.flatnonzero(~flags)
    start = int(not_rep[-1]) + 1 if len(not_rep) else 0
    return start if len(flags) - start >= min_run else None
