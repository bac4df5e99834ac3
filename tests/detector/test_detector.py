import json
import math
import pickle

import numpy as np
import pytest

from opdwatch.detector.detector import Detector
from opdwatch.detector.settings import DetectorSettings
from opdwatch.detector.simulate import TraceSpec, simulate
from opdwatch.errors import OpdwatchError


def _healthy(rng: np.random.Generator) -> dict[str, float]:
    return {"rollout/truncation_rate": rng.binomial(64, 0.01) / 64, "rollout/loop_rate": rng.binomial(64, 0.01) / 64,
            "rollout/repetition_rate": rng.binomial(64, 0.01) / 64, "rollout/mean_length": 35 + rng.normal(0, 1.5),
            "token/repetitive_share": 0.03 + rng.normal(0, 0.006), "token/adv_repetitive_mean": 0.8 + rng.normal(0, .2),
            "token/adv_regular_mean": -0.2 + rng.normal(0, 0.05), "token/eos_advantage_mean": 0.4 + rng.normal(0, .2),
            "token/teacher_logp_mean": -1.3 + rng.normal(0, 0.05)}


@pytest.mark.parametrize("seed", range(5))
def test_fires_within_the_bound_after_a_known_change(seed):
    # A sustained 5-scale rise in two precursor signals from step 40: with k=1, h=5 and z clipped at 4 each
    # step adds 3, so both fire on the 2nd changed step and the warning is due by step 41 (+1 for noise).
    rng = np.random.default_rng(seed)
    det = Detector(DetectorSettings())
    first = None
    for step in range(1, 80):
        m = _healthy(rng)
        if step >= 40:
            m["token/repetitive_share"] += 0.06
            m["token/eos_advantage_mean"] -= 1.5
        state = det.update(step, m)
        if step < 40:
            assert state.level in ("warmup", "ok"), state.message
        if first is None and state.level in ("warning", "alarm"):
            first = state
    assert first is not None and 40 <= first.step <= 42
    assert first.level == "warning"
    assert {e.signal for e in first.evidence} >= {"rep_share", "eos_adv"}
    assert all(e.fired and e.statistic > 5.0 for e in first.evidence)
    assert "rep_share" in first.message


@pytest.mark.parametrize("seed", range(20))
def test_stationary_noise_never_fires(seed):
    rng = np.random.default_rng(100 + seed)
    det = Detector(DetectorSettings())
    levels = {det.update(step, _healthy(rng)).level for step in range(1, 501)}
    assert levels <= {"warmup", "ok"}


def test_warmup_length_and_no_statistics_before_it():
    rng = np.random.default_rng(0)
    s = DetectorSettings(warmup_steps=6)
    det = Detector(s)
    levels = [det.update(step, _healthy(rng)).level for step in range(1, 10)]
    assert levels[:6] == ["warmup"] * 6 and levels[6] == "ok"


def test_truncation_guard_works_inside_the_warmup_but_ignores_a_one_step_spike():
    rng = np.random.default_rng(1)
    det = Detector(DetectorSettings())
    m = _healthy(rng)
    assert det.update(1, {**m, "rollout/truncation_rate": 0.35}).level == "warmup"  # one step: a spike
    assert det.update(2, {**m, "rollout/truncation_rate": 0.1}).level == "warmup"
    det.update(3, {**m, "rollout/truncation_rate": 0.4})
    state = det.update(4, {**m, "rollout/truncation_rate": 0.5})
    assert state.level == "alarm" and "truncation rate" in state.reason


def test_a_one_step_truncation_jump_warns_at_once():
    rng = np.random.default_rng(4)
    det = Detector(DetectorSettings())
    for step in range(1, 10):
        assert det.update(step, _healthy(rng)).level in ("warmup", "ok")
    state = det.update(10, {**_healthy(rng), "rollout/truncation_rate": 0.9})
    assert state.level == "warning" and "jumped to 0.90" in state.reason
    off = Detector(DetectorSettings(warn_truncation_jump=0))  # 0 turns the rule off
    for step in range(1, 10):
        off.update(step, _healthy(np.random.default_rng(step)))
    assert off.update(10, {**_healthy(rng), "rollout/truncation_rate": 0.9}).level == "ok"


def test_steps_back_down_only_after_recover_steps_quiet_steps():
    rows = simulate(TraceSpec(steps=120, onset=40, width=1, size=0.9, seed=3))
    det = Detector(DetectorSettings(recover_steps=5))
    states = [det.update(step, m) for step, m in rows[:60]]
    assert any(s.level == "alarm" for s in states)
    rng = np.random.default_rng(2)
    levels = [det.update(60 + i, _healthy(rng)).level for i in range(1, 80)]
    assert levels[0] != "ok"  # not on the first quiet step
    assert levels[-1] == "ok"  # but eventually healthy again (statistics are capped)


def test_missing_and_nan_metrics_are_skipped_and_steps_must_increase():
    det = Detector(DetectorSettings())
    for step in range(1, 20):
        state = det.update(step, {"rollout/truncation_rate": 0.0, "token/adv_repetitive_mean": math.nan})
    assert state.level == "ok"
    with pytest.raises(ValueError):
        det.update(5, {})


def test_bad_settings_raise_one_line_errors():
    for bad in (DetectorSettings(signals="nope"), DetectorSettings(warmup_steps=1), DetectorSettings(h=0),
                DetectorSettings(warn_truncation=0.5, alarm_truncation=0.3),
                DetectorSettings(warn_truncation_jump=1.5)):
        with pytest.raises(OpdwatchError) as err:
            Detector(bad)
        assert "\n" not in str(err.value)


def test_scores_expose_per_signal_statistics():
    rng = np.random.default_rng(0)
    det = Detector(DetectorSettings())
    for step in range(1, 8):
        state = det.update(step, _healthy(rng))
    scores = state.scores()
    assert scores["detector/level"] == 0.0
    assert "detector/cusum/rep_share" in scores and "detector/z/eos_adv" in scores


def _same(state) -> tuple:
    # repr is exact for floats and equal for NaN; `signals` (every watched signal) is left out of the repr
    return state.step, state.level, state.previous, state.reason, repr(state.evidence), repr(state.signals)


def _round_trip(state: dict, how: str) -> dict:
    return json.loads(json.dumps(state, allow_nan=False)) if how == "json" else pickle.loads(pickle.dumps(state))


@pytest.mark.parametrize("how", ["json", "pickle"])
def test_a_saved_and_loaded_detector_continues_exactly_as_an_uninterrupted_one(how):
    # A collapse (warning at row 36, alarm at 40), then rows without one signal (NaN values), then a healthy
    # stretch (held in alarm for 2 quiet steps, ok again at row 119). Splits inside the warm-up (NaN
    # baselines), right after it, before the warning, inside the episode, in the held steps and after.
    rows = simulate(TraceSpec(steps=90, onset=40, width=1.0, seed=7))
    rows += [(step + 90, {**m, "token/teacher_logp_mean": math.nan}) for step, m in rows[60:80]]
    rows += [(step + 170, m) for step, m in simulate(TraceSpec(steps=60, onset=None, seed=5))]
    settings = DetectorSettings(warmup_steps=3, recover_steps=3)
    whole = Detector(settings)
    expected = [_same(whole.update(step, m)) for step, m in rows]
    assert [s[1] for s in expected[115:119]] == ["alarm", "alarm", "alarm", "ok"]
    for k in (1, 2, 3, 4, 30, 36, 38, 40, 60, 95, 117, 118, 150):
        first = Detector(settings)
        got = [_same(first.update(step, m)) for step, m in rows[:k]]
        resumed = Detector(settings)
        resumed.load_state_dict(_round_trip(first.state_dict(), how))
        got += [_same(resumed.update(step, m)) for step, m in rows[k:]]
        assert got == expected, f"split after {k} rows"
        assert resumed.steps_seen == whole.steps_seen and resumed.level == whole.level


def test_a_state_from_other_settings_or_malformed_is_refused_and_changes_nothing():
    rows = simulate(TraceSpec(steps=20, onset=None, seed=3))
    det = Detector(DetectorSettings())
    for step, m in rows:
        det.update(step, m)
    state = det.state_dict()
    for other in (DetectorSettings(signals="truncation,loop"), DetectorSettings(h=6.0)):
        target = Detector(other)
        before = target.state_dict()
        with pytest.raises(OpdwatchError) as err:
            target.load_state_dict(state)
        assert "other settings" in str(err.value) and "\n" not in str(err.value)
        assert target.state_dict() == before
    target = Detector(DetectorSettings())
    for bad in ({**state, "level": "panic"}, {k: v for k, v in state.items() if k != "cusum"}, [1, 2]):
        with pytest.raises(OpdwatchError):
            target.load_state_dict(bad)
        assert target.steps_seen == 0


def test_an_unknown_truncation_step_neither_breaks_nor_extends_the_guard():
    # guard_steps=2 at alarm_truncation: high, unknown, high must alarm on the second high step (the unknown step
    # is left out, as in the verdict), and high, unknown must not alarm on the unknown step.
    def run(values):
        det = Detector(DetectorSettings(warmup_steps=2))
        states = [det.update(step, {"rollout/truncation_rate": v}) for step, v in enumerate(values, 1)]
        return [s.level for s in states]

    assert run([0.0, 0.0, 0.9, math.nan, 0.9])[-1] == "alarm"
    assert run([0.0, 0.0, 0.9, math.nan])[-1] != "alarm"
    assert run([0.0, 0.0, 0.9, 0.0, 0.9])[-1] != "alarm"  # a known healthy step does break it
