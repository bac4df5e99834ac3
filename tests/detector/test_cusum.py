import math
import random

import numpy as np
import pytest

from opdwatch.detector.cusum import Cusum, PageHinkley, cusum_update, page_hinkley_update


def test_cusum_accumulates_a_shift_and_ignores_noise_below_the_allowance():
    state = Cusum()
    for _ in range(3):
        state = cusum_update(state, 3.0, k=1.0)
    assert state.up == pytest.approx(6.0)
    assert state.down == 0.0
    for _ in range(10):
        state = cusum_update(state, 0.5, k=1.0)  # below the allowance: evidence drains
    assert state.up == 1.0


def test_cusum_is_two_sided_capped_and_skips_nan():
    state = Cusum()
    for _ in range(100):
        state = cusum_update(state, -4.0, k=0.5, cap=10.0)
    assert state.down == 10.0 and state.up == 0.0
    assert cusum_update(state, math.nan) == state


def _river_example_stream() -> list[int]:
    rng = random.Random(12345)  # river.drift.PageHinkley's docstring example
    return rng.choices([0, 1], k=1000) + rng.choices(range(4, 8), k=1000)


def test_page_hinkley_reproduces_rivers_documented_detection_index():
    state, hits = PageHinkley(), []
    for i, x in enumerate(_river_example_stream()):
        state = page_hinkley_update(state, x)
        if state.drift:
            hits.append(i)
    assert hits[0] == 1006  # "Change detected at index 1006, input value: 5" in river's docs


def test_page_hinkley_resets_after_a_detection_and_respects_min_instances():
    state = PageHinkley()
    for _ in range(10):
        state = page_hinkley_update(state, 100.0, min_instances=30, threshold=1.0)
        assert not state.drift  # too few instances
    state = PageHinkley(drift=True, n=50, mean=3.0)
    assert page_hinkley_update(state, 0.0).n == 1


def test_page_hinkley_down_mode_detects_a_drop_only():
    stream = np.r_[np.full(100, 5.0), np.full(100, 0.0)]
    for mode, expect in (("down", True), ("up", False)):
        state, fired = PageHinkley(), False
        for x in stream:
            state = page_hinkley_update(state, float(x), threshold=20.0, mode=mode)
            fired |= state.drift
        assert fired is expect
    with pytest.raises(ValueError):
        page_hinkley_update(PageHinkley(), 1.0, mode="sideways")


def test_page_hinkley_matches_river_step_for_step_when_river_is_installed():
    drift = pytest.importorskip("river.drift")
    rng = np.random.default_rng(0)
    xs = np.r_[rng.normal(0.02, 0.01, 300).clip(0, 1), rng.normal(0.15, 0.01, 100)]
    for kw in ({"threshold": 0.5}, {"threshold": 0.5, "min_instances": 5}):
        theirs, ours, state = drift.PageHinkley(mode="up", **kw), [], PageHinkley()
        fired_theirs = []
        for i, x in enumerate(xs):
            theirs.update(float(x))
            state = page_hinkley_update(state, float(x), mode="up", **kw)
            fired_theirs += [i] if theirs.drift_detected else []
            ours += [i] if state.drift else []
        assert ours == fired_theirs and ours
