"""Step aggregates: partials from several ranks merge into exactly the one-process metrics (float64)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from opdwatch import aggregates


def _partials(lengths: np.ndarray) -> aggregates.Partials:
    r, n = len(lengths), int(lengths.sum())
    false_r, false_n = np.zeros(r, dtype=bool), np.zeros(n, dtype=bool)
    return aggregates.partials(
        num_tokens=lengths, truncated=false_r, repetitive=false_r, looping=false_r,
        tail_ratio=np.ones(r), correct=np.full(r, np.nan), student_logp=None, teacher_logp=None, ref_logp=None,
        advantage=None, loss_mask=np.ones(n, dtype=bool), rep_token=false_n, rep_ngram=false_n, rep_tail=false_n,
        eos=false_n)


def test_length_cv_over_ranks_equals_numpy() -> None:
    rng = np.random.default_rng(0)
    ranks = [rng.integers(1, 4000, size=k) for k in (7, 1, 30)]
    every = np.concatenate(ranks).astype(np.float64)
    merged = aggregates.finalize(aggregates.merge(_partials(x) for x in ranks))
    assert merged["rollout/length_cv"] == pytest.approx(every.std() / every.mean(), rel=1e-12)
    assert merged["rollout/mean_length"] == pytest.approx(every.mean(), rel=1e-12)


def test_length_cv_edge_cases() -> None:
    assert aggregates.finalize(_partials(np.array([5, 5, 5])))["rollout/length_cv"] == 0.0
    # A long looping rollout among short ones moves the cv far more than the mean.
    short, mixed = np.full(63, 40), np.concatenate([np.full(62, 40), [128, 128]])
    cv = [aggregates.finalize(_partials(x))["rollout/length_cv"] for x in (short, mixed)]
    assert cv[0] == 0.0 and cv[1] > 0.25
    assert math.isnan(aggregates.finalize(_partials(np.array([0, 0])))["rollout/length_cv"])  # mean 0
    assert math.isnan(aggregates.finalize(_partials(np.array([], dtype=np.int64)))["rollout/length_cv"])
