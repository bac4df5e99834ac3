"""What to do about a warning or an alarm: raise beta and/or alpha, with a cooldown and caps, and relax
again once the run has been healthy for a while.

    policy = InterventionPolicy(PolicySettings(), beta=0.0, alpha=0.0)
    for decision in policy.decide(state, step):
        controller.set(beta=decision.beta, alpha=decision.alpha, reason=decision.reason)

The policy tracks the knob values it set (call :meth:`observe` if something else changes them). A knob at
zero cannot be raised multiplicatively, so the first raise lifts it to its floor (by default Stable-OPD's
beta 0.1, alpha 0.5); later raises multiply it, never above the cap. A warning applies one raise, an alarm
``alarm_raises``; after a raise the policy waits ``cooldown_steps`` before raising again (the update needs a
few steps to act on the rollouts), except that an escalation from warning to alarm may act at once.
After ``relax_after_steps`` consecutive ok steps the knobs step back towards their starting values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from opdwatch.detector.detector import LEVELS, DetectorState
from opdwatch.detector.persist import check_settings, decode_float, encode_float, reading
from opdwatch.detector.settings import PolicySettings


@dataclass(frozen=True)
class Decision:
    step: int
    action: str               # "raise", "relax" or "restore"
    beta: float | None        # new beta (None: unchanged)
    alpha: float | None       # new alpha (None: unchanged)
    reason: str               # one line for the event log and the controller

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


class InterventionPolicy:
    def __init__(self, settings: PolicySettings | None = None, *, beta: float = 0.0, alpha: float = 0.0) -> None:
        self.settings = settings or PolicySettings()
        self.settings.validate()
        self.base_beta, self.base_alpha = float(beta), float(alpha)  # relaxing never goes below these
        self.beta, self.alpha = float(beta), float(alpha)
        self._last_raise: int | None = None
        self._last_raise_level = "ok"
        self._healthy_since: int | None = None

    def observe(self, *, beta: float, alpha: float) -> None:
        """Sync with the knobs' actual values (another component may have changed them)."""
        self.beta, self.alpha = float(beta), float(alpha)

    def state_dict(self) -> dict[str, Any]:
        """Knobs, their starting values, cooldown and relax bookkeeping (plain JSON-able Python), with the
        settings. The starting values matter on resume: the knobs may be raised by then, and relaxing must
        still lead back to where the run began."""
        return {
            "settings": dataclasses.asdict(self.settings),
            "base_beta": encode_float(self.base_beta),
            "base_alpha": encode_float(self.base_alpha),
            "beta": encode_float(self.beta),
            "alpha": encode_float(self.alpha),
            "last_raise": self._last_raise,
            "last_raise_level": self._last_raise_level,
            "healthy_since": self._healthy_since,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict` of a policy with equal settings (else a one-line OpdwatchError)."""
        check_settings("policy", state.get("settings") if isinstance(state, Mapping) else None,
                       dataclasses.asdict(self.settings))
        with reading("policy"):  # parse everything before changing anything
            knobs = [decode_float(state[k]) for k in ("base_beta", "base_alpha", "beta", "alpha")]
            last_raise = None if state["last_raise"] is None else int(state["last_raise"])
            healthy_since = None if state["healthy_since"] is None else int(state["healthy_since"])
            level = str(state["last_raise_level"])
            if level not in LEVELS:
                raise ValueError(f"unknown level {level!r}")
        self.base_beta, self.base_alpha, self.beta, self.alpha = knobs
        self._last_raise, self._last_raise_level, self._healthy_since = last_raise, level, healthy_since

    def decide(self, state: DetectorState, step: int) -> list[Decision]:
        s = self.settings
        if state.level in ("warning", "alarm"):
            self._healthy_since = None
            return self._on_trouble(state, step)
        if self._healthy_since is None:
            self._healthy_since = step
        if step - self._healthy_since + 1 >= s.relax_after_steps and self._raised():
            self._healthy_since = step + 1  # the next relax needs another healthy stretch
            return [self._relax(step)]
        return []

    # ------------------------------------------------------------------------------------ helpers
    def _on_trouble(self, state: DetectorState, step: int) -> list[Decision]:
        s = self.settings
        in_cooldown = self._last_raise is not None and step - self._last_raise < s.cooldown_steps
        escalation = state.level == "alarm" and self._last_raise_level != "alarm"
        if in_cooldown and not (escalation and s.escalate_bypasses_cooldown):
            return []
        raises = s.alarm_raises if state.level == "alarm" else 1
        beta, alpha = self.beta, self.alpha
        for _ in range(raises):
            if s.raise_beta:
                beta = min(s.beta_max, s.beta_floor if beta < s.beta_floor else beta * s.beta_factor)
            if s.raise_alpha:
                alpha = min(s.alpha_max, s.alpha_floor if alpha < s.alpha_floor else alpha * s.alpha_factor)
        decisions: list[Decision] = []
        cause = state.evidence[0].signal if state.evidence else state.reason or "no signal fired"
        if (beta, alpha) != (self.beta, self.alpha):
            decisions.append(Decision(step, "raise", beta if beta != self.beta else None,
                                      alpha if alpha != self.alpha else None,
                                      f"detector {state.level} ({cause}): raise {self._change(beta, alpha)}"))
            self.beta, self.alpha = beta, alpha
        restore = (state.level == "alarm" and s.restore_on_alarm and (escalation or not in_cooldown)) or (
            s.restore_on_warning and state.escalated and state.previous in ("ok", "warmup"))
        if restore:
            decisions.append(Decision(step, "restore", None, None,
                                      f"detector {state.level} ({cause}): restore the last healthy checkpoint"))
        if decisions:
            self._last_raise, self._last_raise_level = step, state.level
        return decisions

    def _change(self, beta: float, alpha: float) -> str:
        parts = [f"{name} {old:g}->{new:g}" for name, old, new in
                 (("beta", self.beta, beta), ("alpha", self.alpha, alpha)) if new != old]
        return ", ".join(parts)

    def _raised(self) -> bool:
        return self.beta > self.base_beta or self.alpha > self.base_alpha

    def _relax(self, step: int) -> Decision:
        s = self.settings

        def down(value: float, base: float, floor: float) -> float:
            new = value * s.relax_factor
            # Below the floor the multiplicative ladder has no rungs: go straight back to the start.
            return base if new < max(floor, base) else new

        beta, alpha = down(self.beta, self.base_beta, s.beta_floor), down(self.alpha, self.base_alpha, s.alpha_floor)
        reason = f"healthy for {s.relax_after_steps} steps: relax {self._change(beta, alpha)}"
        decision = Decision(step, "relax", beta if beta != self.beta else None,
                            alpha if alpha != self.alpha else None, reason)
        self.beta, self.alpha = beta, alpha
        self._last_raise_level = "ok"
        return decision
