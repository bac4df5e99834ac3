"""opdwatch.metrics against hand-computed values and brute-force definitions."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from opdwatch import metrics


def test_zlib_tail_ratio_matches_hand_computation():
    text = "hello world " * 50
    tail = text[-64:].encode()
    assert metrics.zlib_tail_ratio(text, 64) == len(zlib.compress(tail, 6)) / 64


def test_zlib_tail_ratio_counts_utf8_bytes_of_last_characters():
    text = "x" * 10 + "é" * 8  # last 8 characters are 16 UTF-8 bytes
    raw = ("é" * 8).encode("utf-8")
    assert metrics.zlib_tail_ratio(text, 8) == len(zlib.compress(raw, 6)) / 16


def test_zlib_tail_ratio_empty_and_bad_window():
    assert metrics.zlib_tail_ratio("", 10) == 1.0
    with pytest.raises(ValueError):
        metrics.zlib_tail_ratio("abc", 0)


def test_is_repetitive_needs_length_and_low_ratio():
    loop = "1-6=1. " * 20          # 140 chars, a verbatim loop
    assert metrics.zlib_tail_ratio(loop, 64) < 0.5
    assert metrics.is_repetitive(loop, 64, 0.5)
    assert not metrics.is_repetitive(loop[:60], 64, 0.5)   # too short: never flagged
    golden = "14+3=17. 17-5=12. 12*4=48. 48-9=39. 39+7=46. \\boxed{46}"
    assert not metrics.is_repetitive(golden, len(golden), 0.5)
    assert metrics.is_repetitive("a" * 20_000)             # defaults: slime's 10,000 / 0.1


def test_truncation_and_repetition_rate():
    assert metrics.truncation_rate(["eos", "length", "length", "eos"]) == 0.5
    assert np.isnan(metrics.truncation_rate([]))
    texts = ["ab" * 40, "the quick brown fox jumps over the lazy dog, then sits", "xyz" * 30]
    assert metrics.repetition_rate(texts, 32, 0.6) == pytest.approx(2 / 3)


def test_ngram_repeat_flags_hand_case():
    ids = np.array([1, 2, 3, 1, 2, 3, 1, 2, 9])
    # bigrams: (1,2)@1 (2,3)@2 (3,1)@3 (1,2)@4 rep (2,3)@5 rep (3,1)@6 rep (1,2)@7 rep (2,9)@8
    expected = [False, False, False, False, True, True, True, True, False]
    assert metrics.ngram_repeat_flags(ids, 2).tolist() == expected


def test_ngram_flags_do_not_cross_rollouts():
    ids = np.array([1, 2, 1, 2, 1, 2])
    offsets = np.array([0, 2, 4, 6])  # three rollouts "1 2" each: no repeat inside any of them
    assert not metrics.ngram_repeat_flags(ids, 2, offsets).any()


def _brute_ngram(ids: list[int], n: int) -> list[bool]:
    out = []
    for t in range(len(ids)):
        if t < n - 1:
            out.append(False)
            continue
        gram = tuple(ids[t - n + 1:t + 1])
        out.append(any(tuple(ids[s - n + 1:s + 1]) == gram for s in range(n - 1, t)))
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(0, 4), max_size=40), min_size=1, max_size=5), st.integers(1, 5))
@example([[0, 0, 0]], 5)  # a whole batch shorter than n - 1 once broke the hash's shifted slices
def test_ngram_flags_property_matches_brute_force(rollouts, n):
    ids = np.array([t for r in rollouts for t in r], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in rollouts])])
    got = metrics.ngram_repeat_flags(ids, n, offsets).tolist()
    assert got == [f for r in rollouts for f in _brute_ngram(r, n)]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=0, max_size=60), st.integers(1, 4))
def test_seq_rep_n_property(ids, n):
    value = metrics.seq_rep_n(np.array(ids, dtype=np.int64), n)
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    expected = 0.0 if not grams else 1 - len(set(grams)) / len(grams)
    assert value == pytest.approx(expected)
    assert 0.0 <= value < 1.0


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=0, max_size=300), st.integers(1, 128), st.floats(0.05, 1.5))
def test_is_repetitive_property(text, window, threshold):
    flagged = metrics.is_repetitive(text, window, threshold)
    assert flagged == (len(text) >= window and metrics.zlib_tail_ratio(text, window) < threshold)
    # A loop repeated long enough is always flagged at a loose threshold.
    if text:
        assert metrics.is_repetitive(text[:3] * 400, 256, 0.5)


def test_tail_flags_and_proportional_offsets():
    ends = np.array([3, 6, 9, 12])
    assert metrics.tail_flags(ends, 12, 5).tolist() == [False, False, True, True]
    assert metrics.proportional_char_ends(4, 12).tolist() == [3, 6, 9, 12]
    assert metrics.proportional_char_ends(0, 5).tolist() == []


def test_loop_onset():
    flags = np.array([0, 0, 1, 0, 1, 1, 1, 1, 1], dtype=bool)
    assert metrics.loop_onset(flags, 5) == 4
    assert metrics.loop_onset(flags, 6) is None
    assert metrics.loop_onset(flags[:-1] & False, 1) is None
    assert metrics.loop_onset(np.ones(4, dtype=bool), 4) == 0
