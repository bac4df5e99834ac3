import json

import pytest

from opdwatch.detector.detector import DetectorState, Evidence
from opdwatch.detector.policy import InterventionPolicy
from opdwatch.detector.settings import PolicySettings
from opdwatch.errors import OpdwatchError


def _state(step: int, level: str, previous: str = "ok") -> DetectorState:
    ev = (Evidence("rep_share", 0.08, 0.03, 0.01, 4.0, 9.0, "up", True),) if level != "ok" else ()
    return DetectorState(step=step, level=level, previous=previous, evidence=ev, reason="test")


class _Driven:
    """A policy with the knobs held outside it, as the watcher holds them: every decision is applied."""

    def __init__(self, settings: PolicySettings | None = None, *, beta: float = 0.0, alpha: float = 0.0) -> None:
        self.policy = InterventionPolicy(settings, base_beta=beta, base_alpha=alpha)
        self.settings = self.policy.settings
        self.beta, self.alpha = beta, alpha

    def decide(self, state: DetectorState, step: int) -> list:
        decisions = self.policy.decide(state, step, beta=self.beta, alpha=self.alpha)
        for d in decisions:
            self.beta, self.alpha = d.applied_to(self.beta, self.alpha)
        return decisions


def test_first_raise_lifts_zero_knobs_to_their_floors_then_multiplies_after_the_cooldown():
    pol = _Driven(PolicySettings(cooldown_steps=5), beta=0.0, alpha=0.0)
    [d] = pol.decide(_state(10, "warning"), 10)
    assert (d.action, d.beta, d.alpha) == ("raise", 0.1, 0.5)
    assert "rep_share" in d.reason
    for step in range(11, 15):  # inside the cooldown: nothing, though still warning
        assert pol.decide(_state(step, "warning", "warning"), step) == []
    [d] = pol.decide(_state(15, "warning", "warning"), 15)
    assert (d.beta, d.alpha) == (pytest.approx(0.2), pytest.approx(1.0))


def test_raises_stop_at_the_caps():
    pol = _Driven(PolicySettings(cooldown_steps=0, beta_max=0.3, alpha_max=0.8), beta=0.0, alpha=0.0)
    decisions = [d for step in range(1, 20) for d in pol.decide(_state(step, "warning", "warning"), step)]
    assert (pol.beta, pol.alpha) == (0.3, 0.8)
    # beta 0 -> 0.1 (floor) -> 0.2 -> 0.3 (cap), alpha 0 -> 0.5 -> 0.8 (cap); then nothing is left to decide
    assert [(d.beta, d.alpha) for d in decisions] == [(0.1, 0.5), (0.2, 0.8), (0.3, None)]


def test_alarm_escalation_bypasses_the_cooldown_and_applies_several_raises():
    pol = _Driven(PolicySettings(cooldown_steps=10, alarm_raises=2), beta=0.0, alpha=0.0)
    pol.decide(_state(5, "warning"), 5)
    [d] = pol.decide(_state(6, "alarm", "warning"), 6)
    assert (d.beta, d.alpha) == (pytest.approx(0.4), pytest.approx(2.0))
    assert pol.decide(_state(7, "alarm", "alarm"), 7) == []  # the bypass is for the escalation only
    strict = _Driven(PolicySettings(cooldown_steps=10, escalate_bypasses_cooldown=False))
    strict.decide(_state(5, "warning"), 5)
    assert strict.decide(_state(6, "alarm", "warning"), 6) == []


def test_only_the_chosen_knob_moves_and_restore_is_asked_for_on_alarm():
    pol = _Driven(PolicySettings(raise_alpha=False, restore_on_alarm=True), beta=0.05, alpha=0.3)
    decisions = pol.decide(_state(3, "alarm"), 3)
    assert [d.action for d in decisions] == ["raise", "restore"]
    assert decisions[0].alpha is None and decisions[0].beta == pytest.approx(0.2)


def test_relaxes_after_a_healthy_stretch_back_to_the_start_values():
    s = PolicySettings(cooldown_steps=0, relax_after_steps=10, relax_factor=0.5)
    pol = _Driven(s, beta=0.0, alpha=0.0)
    for step in (1, 2, 3):
        pol.decide(_state(step, "warning", "warning"), step)  # 0.1 -> 0.2 -> 0.4
    assert pol.beta == pytest.approx(0.4)
    relaxes = [d for step in range(4, 60) for d in pol.decide(_state(step, "ok", "ok"), step)]
    assert [d.step for d in relaxes] == [13, 23, 33]
    assert [d.beta for d in relaxes] == [pytest.approx(0.2), pytest.approx(0.1), 0.0]
    assert (pol.beta, pol.alpha) == (0.0, 0.0)


def test_targets_follow_the_knobs_as_given_and_bad_settings_fail():
    pol = InterventionPolicy(PolicySettings(), base_beta=0.0, base_alpha=0.0)
    [d] = pol.decide(_state(1, "warning"), 1, beta=0.3, alpha=0.0)  # knobs changed elsewhere: no copy to sync
    assert d.beta == pytest.approx(0.6)
    assert not hasattr(pol, "beta") and not hasattr(pol, "observe")
    with pytest.raises(OpdwatchError, match="policy.beta_factor, alpha_factor, relax_factor"):
        InterventionPolicy(PolicySettings(relax_factor=1.5))


def test_restore_on_warning_asks_once_per_episode():
    pol = _Driven(PolicySettings(restore_on_warning=True, cooldown_steps=0), beta=0.0, alpha=0.0)
    assert [d.action for d in pol.decide(_state(4, "warning", "ok"), 4)] == ["raise", "restore"]
    assert [d.action for d in pol.decide(_state(5, "warning", "warning"), 5)] == ["raise"]


def _resumed(pol: _Driven) -> _Driven:
    # A fresh policy as a resumed run builds it (based on the controller's current, possibly raised, knobs),
    # then loaded from the saved state after a strict-JSON round trip; the knobs come from their own holder.
    fresh = _Driven(pol.settings, beta=pol.beta, alpha=pol.alpha)
    fresh.policy.load_state_dict(json.loads(json.dumps(pol.policy.state_dict(), allow_nan=False)))
    return fresh


def test_cooldown_and_relax_history_survive_a_save_and_load():
    s = PolicySettings(cooldown_steps=5, relax_after_steps=10, relax_factor=0.5)
    levels = {**{t: "warning" for t in range(10, 17)}, **{t: "ok" for t in range(17, 60)}}

    def run(pol: _Driven, steps: range) -> list[tuple]:
        out = []
        for t in steps:
            prev = levels.get(t - 1, "ok")
            out += [(d.step, d.action, d.beta, d.alpha) for d in pol.decide(_state(t, levels[t], prev), t)]
        return out

    whole = _Driven(s, beta=0.0, alpha=0.0)
    expected = run(whole, range(10, 60))
    assert [(d[0], d[1]) for d in expected] == [(10, "raise"), (15, "raise"), (26, "relax"), (36, "relax")]
    for k in (11, 12, 15, 20, 30):  # inside the cooldown, at its end, in the healthy stretch, between relaxes
        first = _Driven(s, beta=0.0, alpha=0.0)
        got = run(first, range(10, k))
        got += run(_resumed(first), range(k, 60))
        assert got == expected, f"split before step {k}"
    forgetful = _Driven(s, beta=0.1, alpha=0.5)  # what a resume did before: history lost
    assert run(forgetful, range(12, 14))[0][:2] == (12, "raise")  # ... so it raised inside the cooldown


def test_a_policy_state_from_other_settings_or_malformed_is_refused():
    pol = _Driven(PolicySettings(), beta=0.0, alpha=0.0)
    pol.decide(_state(3, "warning"), 3)
    other = InterventionPolicy(PolicySettings(cooldown_steps=2))
    with pytest.raises(OpdwatchError, match=r"policy state was saved with other settings: cooldown_steps=5"):
        other.load_state_dict(pol.policy.state_dict())
    assert (other.base_beta, other.base_alpha, other.state_dict()["last_raise"]) == (0.0, 0.0, None)
    with pytest.raises(OpdwatchError, match="malformed"):
        InterventionPolicy(PolicySettings()).load_state_dict({**pol.policy.state_dict(), "base_beta": "lots"})


def test_a_state_saved_while_the_policy_kept_knobs_still_loads():
    # checkpoints written before the policy stopped keeping a copy of beta/alpha: those keys are ignored
    pol = _Driven(PolicySettings(cooldown_steps=5), beta=0.0, alpha=0.0)
    pol.decide(_state(3, "warning"), 3)
    old = {**pol.policy.state_dict(), "beta": 0.1, "alpha": 0.5}
    fresh = InterventionPolicy(PolicySettings(cooldown_steps=5))
    fresh.load_state_dict(json.loads(json.dumps(old)))
    assert fresh.state_dict() == pol.policy.state_dict()
    assert fresh.decide(_state(4, "warning", "warning"), 4, beta=0.1, alpha=0.5) == []  # the cooldown carried over
