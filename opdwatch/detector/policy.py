"""What to do about a warning or an alarm: raise beta and/or alpha, with a cooldown and caps, and relax
again once the run has been healthy for a while.

    policy = InterventionPolicy(PolicySettings(), base_beta=0.0, base_alpha=0.0)
    for d in policy.decide(state, step, beta=knobs.beta, alpha=knobs.alpha):
        if d.action != "restore":  # raise / relax (a restore is the trainer's: opdwatch.detector.watcher)
            knobs.set(beta=d.beta, alpha=d.alpha, reason=d.reason, action=d.action, step=d.step)

The policy holds no knobs: it is told their current values at every step (the knob holder is
opdwatch.detector.knobs.Controller) and returns targets. It keeps only its own bookkeeping: the starting
values (relaxing never goes below them), the last raise (cooldown) and the healthy streak (relax).
A knob at zero cannot be raised multiplicatively, so the first raise lifts it to its floor (by default
Stable-OPD's beta 0.1, alpha 0.5); later raises multiply it, never above the cap. A warning applies one raise,
an alarm ``alarm_raises``; after a raise the policy waits ``cooldown_steps`` before raising again (the update
needs a few steps to act on the rollouts), except that an escalation from warning to alarm may act at once.
After ``relax_after_steps`` consecutive ok steps the knobs step back towards their starting values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from opdwatch.config_tree import validate_tree
from opdwatch.detector.detector import LEVELS, DetectorState
from opdwatch.detector.persist import check_settings, decode_float, encode_float, reading
from opdwatch.detector.settings import PolicySettings
from opdwatch.text import plural


@dataclass(frozen=True)
class Decision:
    step: int
    action: str               # "raise", "relax" or "restore"
    beta: float | None        # new beta (None: unchanged)
    alpha: float | None       # new alpha (None: unchanged)
    reason: str               # one line for the event log and the controller

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)

    def applied_to(self, beta: float, alpha: float) -> tuple[float, float]:
        """The knobs after this decision, from their values before it."""
        return (beta if self.beta is None else self.beta, alpha if self.alpha is None else self.alpha)


class InterventionPolicy:
    def __init__(self, settings: PolicySettings | None = None, *, base_beta: float = 0.0,
                 base_alpha: float = 0.0) -> None:
        self.settings = settings or PolicySettings()
        validate_tree(self.settings, "policy")
        self.base_beta, self.base_alpha = float(base_beta), float(base_alpha)  # relaxing never goes below these
        self._last_raise: int | None = None
        self._last_raise_level = "ok"
        self._healthy_since: int | None = None

    def state_dict(self) -> dict[str, Any]:
        """Starting values, cooldown and relax bookkeeping (plain JSON-able Python), with the settings. The
        starting values matter on resume: the knobs may be raised by then, and relaxing must still lead back
        to where the run began."""
        return {
            "settings": dataclasses.asdict(self.settings),
            "base_beta": encode_float(self.base_beta),
            "base_alpha": encode_float(self.base_alpha),
            "last_raise": self._last_raise,
            "last_raise_level": self._last_raise_level,
            "healthy_since": self._healthy_since,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict` of a policy with equal settings (else a one-line OpdwatchError).
        States saved when the policy still kept a copy of the knobs carry ``beta``/``alpha``: ignored, the
        knob holder's own checkpoint has them."""
        check_settings("policy", state.get("settings") if isinstance(state, Mapping) else None,
                       dataclasses.asdict(self.settings))
        with reading("policy"):  # parse everything before changing anything
            base_beta, base_alpha = decode_float(state["base_beta"]), decode_float(state["base_alpha"])
            last_raise = None if state["last_raise"] is None else int(state["last_raise"])
            healthy_since = None if state["healthy_since"] is None else int(state["healthy_since"])
            level = str(state["last_raise_level"])
            if level not in LEVELS:
                raise ValueError(f"unknown level {level!r}")
        self.base_beta, self.base_alpha = base_beta, base_alpha
        self._last_raise, self._last_raise_level, self._healthy_since = last_raise, level, healthy_since

    def decide(self, state: DetectorState, step: int, *, beta: float, alpha: float) -> list[Decision]:
        """The decisions for this step, given the knobs' current values (targets, None = leave as is)."""
        s = self.settings
        beta, alpha = float(beta), float(alpha)
        if state.level in ("warning", "alarm"):
            self._healthy_since = None
            return self._on_trouble(state, step, beta, alpha)
        if self._healthy_since is None:
            self._healthy_since = step
        if step - self._healthy_since + 1 >= s.relax_after_steps and self._raised(beta, alpha):
            self._healthy_since = step + 1  # the next relax needs another healthy stretch
            return [self._relax(step, beta, alpha)]
        return []

    # ------------------------------------------------------------------------------------ helpers
    def _on_trouble(self, state: DetectorState, step: int, beta: float, alpha: float) -> list[Decision]:
        s = self.settings
        in_cooldown = self._last_raise is not None and step - self._last_raise < s.cooldown_steps
        escalation = state.level == "alarm" and self._last_raise_level != "alarm"
        if in_cooldown and not (escalation and s.escalate_bypasses_cooldown):
            return []
        new_beta, new_alpha = raise_targets(s, state.level, beta, alpha)
        decisions: list[Decision] = []
        cause = state.evidence[0].signal if state.evidence else state.reason or "no signal fired"
        if (new_beta, new_alpha) != (beta, alpha):
            change = _change(beta, alpha, new_beta, new_alpha)
            decisions.append(Decision(step, "raise", new_beta if new_beta != beta else None,
                                      new_alpha if new_alpha != alpha else None,
                                      f"detector {state.level} ({cause}): raise {change}"))
        restore = (state.level == "alarm" and s.restore_on_alarm and (escalation or not in_cooldown)) or (
            s.restore_on_warning and state.escalated and state.previous in ("ok", "warmup"))
        if restore:
            decisions.append(Decision(step, "restore", None, None,
                                      f"detector {state.level} ({cause}): restore the last healthy checkpoint"))
        if decisions:
            self._last_raise, self._last_raise_level = step, state.level
        return decisions

    def _raised(self, beta: float, alpha: float) -> bool:
        return beta > self.base_beta or alpha > self.base_alpha

    def _relax(self, step: int, beta: float, alpha: float) -> Decision:
        s = self.settings

        def down(value: float, base: float, floor: float) -> float:
            new = value * s.relax_factor
            # Below the floor the multiplicative ladder has no rungs: go straight back to the start.
            return base if new < max(floor, base) else new

        new_beta, new_alpha = down(beta, self.base_beta, s.beta_floor), down(alpha, self.base_alpha, s.alpha_floor)
        reason = f"healthy for {plural(s.relax_after_steps, 'step')}: relax {_change(beta, alpha, new_beta, new_alpha)}"
        self._last_raise_level = "ok"
        return Decision(step, "relax", new_beta if new_beta != beta else None,
                        new_alpha if new_alpha != alpha else None, reason)


def raise_targets(s: PolicySettings, level: str, beta: float, alpha: float) -> tuple[float, float]:
    """The knobs after the raise a ``level`` (warning or alarm) calls for: the policy's ladder, which the
    alerts also quote as the recommended next values (opdwatch.alerts.recommend)."""
    new_beta, new_alpha = float(beta), float(alpha)
    for _ in range(s.alarm_raises if level == "alarm" else 1):
        if s.raise_beta:
            new_beta = min(s.beta_max, s.beta_floor if new_beta < s.beta_floor else new_beta * s.beta_factor)
        if s.raise_alpha:
            new_alpha = min(s.alpha_max, s.alpha_floor if new_alpha < s.alpha_floor else new_alpha * s.alpha_factor)
    return new_beta, new_alpha


def describe_change(beta: float, alpha: float, new_beta: float, new_alpha: float) -> str:
    """``beta 0->0.1, alpha 0->0.5``: the changed knobs (the text of decisions and of alert recommendations)."""
    return _change(beta, alpha, new_beta, new_alpha)


def _change(beta: float, alpha: float, new_beta: float, new_alpha: float) -> str:
    changes = [f"{name} {old:g}->{new:g}" for name, old, new in
               (("beta", beta, new_beta), ("alpha", alpha, new_alpha)) if new != old]
    return ", ".join(changes)
