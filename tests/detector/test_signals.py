import json
import math

import pytest

from opdwatch.detector.signals import DEFAULT_SIGNALS, SIGNALS, Baseline, signal_values


def test_signal_values_derive_gap_and_log_length_and_nan_when_missing():
    values = signal_values({"token/adv_repetitive_mean": 1.5, "token/adv_regular_mean": -0.25,
                            "rollout/mean_length": math.e ** 3})
    assert values["adv_gap"] == pytest.approx(1.75)
    assert values["length"] == pytest.approx(3.0)
    assert math.isnan(values["truncation"])
    assert set(values) == set(DEFAULT_SIGNALS)


def test_every_signal_names_its_metric_keys_and_a_direction():
    for spec in SIGNALS.values():
        assert spec.keys and spec.direction in ("up", "down", "both") and spec.floor > 0


def test_baseline_is_floored_so_a_flat_warmup_does_not_blow_up_z():
    b = Baseline(floor=0.03, warmup=4, halflife=30)
    for _ in range(4):
        b.observe(0.0, adapt=True)
    assert b.ready and b.scale == pytest.approx(0.03)
    assert b.z(0.0625) == pytest.approx(0.0625 / 0.03)  # 4 of 64 rollouts truncated: ~2 scales, not infinite


def test_baseline_adapts_to_slow_drift_only_when_allowed_and_clips_outliers():
    b = Baseline(floor=0.01, warmup=4, halflife=10)
    for x in (1.0, 1.01, 0.99, 1.0):
        b.observe(x, adapt=True)
    frozen_mean = b.mean
    b.observe(5.0, adapt=False)
    assert b.mean == frozen_mean
    b.observe(100.0, adapt=True)  # clipped deviation: an outlier nudges, it does not drag
    assert b.mean - frozen_mean < 3 * b.scale
    for i in range(200):
        b.observe(1.0 + 0.001 * i, adapt=True)
    assert b.mean == pytest.approx(1.2, abs=0.03)


def test_baseline_state_round_trips_mid_warmup_and_after_through_strict_json():
    def fresh() -> Baseline:
        return Baseline(floor=0.03, warmup=4, halflife=30)

    xs = [0.01, 0.02, 0.0, 0.05, 0.03, 0.2, 0.04, math.nan, 0.02]
    for k in range(len(xs) + 1):
        whole, first = fresh(), fresh()
        for x in xs:
            whole.observe(x, adapt=True)
        for x in xs[:k]:
            first.observe(x, adapt=True)
        second = fresh()
        second.load_state_dict(json.loads(json.dumps(first.state_dict(), allow_nan=False)))  # NaN mean mid-warm-up
        for x in xs[k:]:
            second.observe(x, adapt=True)
        assert repr(second) == repr(whole), k
