"""The changepoint segmentation: PELT is exact, the transform stabilises binomial noise, spikes and noisy
regimes are handled as documented (docs/analysis.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from opdwatch.changepoints import (
    ChangepointSettings,
    median3,
    noise_sd,
    pelt,
    segment_length,
    segment_rate,
    stabilised_rate,
)


def _brute(x: np.ndarray, cost: str, pen: float, m: int, floor: float) -> list[int]:
    """Optimal partitioning by exhaustive dynamic programming (no pruning): what PELT must equal."""
    n = len(x)
    best, prev = [math.inf] * (n + 1), [0] * (n + 1)
    best[0] = -pen

    def c(s: int, t: int) -> float:
        seg = x[s:t]
        return float(((seg - seg.mean()) ** 2).sum()) if cost == "l2" else (t - s) * math.log(max(seg.var(), floor))

    for t in range(m, n + 1):
        for s in [0, *range(m, t - m + 1)]:
            if t - s >= m and best[s] < math.inf and best[s] + c(s, t) + pen < best[t]:
                best[t], prev[t] = best[s] + c(s, t) + pen, s
    out, t = [], n
    while t > 0:
        t = prev[t]
        out.append(t)
    return sorted(out)


@pytest.mark.parametrize("cost", ["l2", "normal"])
def test_pelt_equals_exhaustive_search(cost: str) -> None:
    rng = np.random.default_rng(0)
    for _ in range(60):
        n = int(rng.integers(6, 36))
        x = np.r_[rng.normal(0, 1, n // 2), rng.normal(rng.uniform(0, 3), rng.uniform(0.3, 2), n - n // 2)]
        pen, m = float(rng.uniform(1, 10)), int(rng.integers(1, 4))
        assert pelt(x, cost=cost, penalty=pen, min_size=m, var_floor=0.01) == _brute(x, cost, pen, m, 0.01)


def test_pelt_short_series_is_one_segment() -> None:
    assert pelt(np.array([0.0, 1.0, 1.0]), penalty=1.0, min_size=3) == [0]


def test_stabilised_rate_has_one_noise_scale() -> None:
    rng = np.random.default_rng(1)
    n = 64
    for p in (0.03, 0.2, 0.5, 0.9):
        k = rng.binomial(n, p, size=20_000)
        sd = float(np.std(stabilised_rate(k / n, np.full(len(k), n))))
        assert 0.75 < sd * 2 * math.sqrt(n) < 1.15, (p, sd)


def test_median3_drops_spikes_and_keeps_steps_and_ramps() -> None:
    spike = np.r_[np.zeros(5), [1.0], np.zeros(5)]
    assert median3(spike).max() == 0.0
    step = np.r_[np.zeros(5), np.ones(5)]
    ramp = np.r_[np.zeros(3), [0.2, 0.5, 0.9], np.ones(3)]
    assert (median3(step) == step).all() and (median3(ramp) == ramp).all()
    two = np.r_[np.zeros(5), [1.0, 1.0], np.zeros(5)]
    assert (median3(two) == two).all()  # two steps are kept: whether they are a regime is PELT's call


def test_noise_sd_ignores_level_shifts() -> None:
    rng = np.random.default_rng(2)
    x = np.r_[rng.normal(0, 0.1, 100), rng.normal(5, 0.1, 100)]
    assert 0.08 < noise_sd(x) < 0.12


def _rates(rng: np.random.Generator, p: np.ndarray, n: int) -> np.ndarray:
    return rng.binomial(n, p) / n


def test_collapse_then_noisy_partial_recovery() -> None:
    """The demo's shape: the noisy 0.2-0.6 regime after the collapse is one regime, however long."""
    rng = np.random.default_rng(3)
    for quiet, noisy in ((8, 40), (150, 120)):
        p = np.r_[np.full(quiet, 0.05), np.full(20, 0.95), rng.uniform(0.2, 0.6, noisy)]
        y, steps = _rates(rng, p, 64), np.arange(1, len(p) + 1)
        regimes = segment_rate(steps, y, np.full(len(p), 64))
        assert [r.start for r in regimes] == [1, quiet + 1, quiet + 21]
        assert regimes[1].level > 0.9 and 0.3 < regimes[2].level < 0.5


def test_median_prefilter_splits_a_long_noisy_regime() -> None:
    """Why the series is not median-filtered before segmenting (docs/analysis.md): the filter's flat runs
    inside a noisy regime look like low-variance segments to the mean-and-variance cost."""
    rng = np.random.default_rng(0)
    p = np.r_[np.full(200, 0.04), np.full(10, 0.95), rng.uniform(0.15, 0.65, 120)]
    y, steps, n = _rates(rng, p, 64), np.arange(330), np.full(330, 64)
    assert len(segment_rate(steps, y, n)) == 3
    assert len(segment_rate(steps, y, n, ChangepointSettings(median3=True, merge_within=0.0))) > 3


def test_spike_is_no_regime_but_two_quiet_regimes_are() -> None:
    rng = np.random.default_rng(4)
    p = np.full(60, 0.04)
    p[30] = 0.9
    y = _rates(rng, p, 32)
    y[30] = 0.9
    assert len(segment_rate(np.arange(60), y, np.full(60, 32))) == 1
    y2 = _rates(rng, np.r_[np.full(30, 0.04), np.full(30, 0.35)], 32)
    assert [r.start for r in segment_rate(np.arange(60), y2, np.full(60, 32))] == [0, 30]


def test_unknown_rollout_counts_use_the_series_noise() -> None:
    rng = np.random.default_rng(5)
    y = _rates(rng, np.r_[np.full(30, 0.05), np.full(30, 0.9)], 32)
    assert [r.start for r in segment_rate(np.arange(60), y)] == [0, 30]


def test_length_regimes() -> None:
    rng = np.random.default_rng(6)
    length = np.r_[rng.normal(100, 5, 25), rng.normal(180, 8, 25)]
    regimes = segment_length(np.arange(50), length)
    assert [r.start for r in regimes] == [0, 25] and regimes[1].level / regimes[0].level > 1.6


def test_settings_are_checked() -> None:
    for bad in (ChangepointSettings(cost="l1"), ChangepointSettings(penalty=0), ChangepointSettings(min_size=0)):
        with pytest.raises(ValueError):
            bad.validate()
    r = segment_rate([1, 2, 3], [0.0, 0.5, 1.0], [8, 8, 8])[0]
    assert r.as_dict() == {"start": 1, "end": 3, "steps": 3, "level": r.level, "sd": r.sd}
