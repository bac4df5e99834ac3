import numpy as np
import pytest

from opdwatch.detector.replay import collapse_step
from opdwatch.detector.simulate import (
    HEALTHY_LENGTH_CV,
    TraceSpec,
    _mixture_cv,
    first_at_least,
    random_collapse,
    random_stable,
    simulate,
)


def test_collapsing_trace_collapses_near_its_onset_with_precursors_leading():
    rows = simulate(TraceSpec(steps=200, onset=120, width=1.0, precursor_lead=7, seed=1))
    collapse = collapse_step(rows)
    assert collapse is not None and 117 <= collapse <= 124
    pre = first_at_least(rows, "token/repetitive_share", 0.06)
    assert pre is not None and pre <= collapse - 4  # the repetitive-token share moves first
    early = [m["token/eos_advantage_mean"] for s, m in rows if s < 100]
    late = [m["token/eos_advantage_mean"] for s, m in rows if collapse - 2 <= s <= collapse]
    assert np.mean(early) > 0 > np.mean(late)


def test_stable_trace_never_reaches_half_truncation_and_is_reproducible():
    spec = TraceSpec(steps=300, onset=None, spikes=3, seed=4)
    rows = simulate(spec)
    assert collapse_step(rows) is None and len(rows) == 300
    assert rows == simulate(spec)


def test_random_specs_cover_the_regimes():
    rng = np.random.default_rng(0)
    fast, slow = random_collapse(rng, regime="fast", seed=1), random_collapse(rng, regime="slow", seed=2)
    assert fast.onset < 40 < 150 <= slow.onset and fast.width < slow.width + 1
    assert random_collapse(rng, regime="stress", seed=3).precursor_lead == 0
    assert random_stable(rng, seed=5).onset is None


def test_simulated_length_cv_is_the_mixture_of_healthy_and_truncated_lengths() -> None:
    f = np.array([0.0, 1 / 64, 0.1, 0.5, 1.0])
    cv = _mixture_cv(f, 35.0, 128.0, HEALTHY_LENGTH_CV)
    assert cv[0] == pytest.approx(HEALTHY_LENGTH_CV) and cv[-1] == pytest.approx(0.0, abs=1e-12)
    assert cv[1] > cv[0] + 0.1  # one truncated rollout in 64 already spreads the lengths
    # Brute force: 1000 rollouts, 100 truncated at 128, the rest 35 with sd 0.25 * 35 (population moments).
    healthy = 35.0 + 0.25 * 35.0 * np.array([1.0, -1.0] * 450)
    lengths = np.concatenate([healthy, np.full(100, 128.0)])
    assert _mixture_cv(np.array([0.1]), 35.0, 128.0, 0.25)[0] == pytest.approx(lengths.std() / lengths.mean())
    rows = simulate(TraceSpec(steps=40, onset=None, seed=5))
    assert all(0.0 <= m["rollout/length_cv"] < 2.0 for _, m in rows)
