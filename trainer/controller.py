"""The knobs a detector may turn mid-run: beta (KL to the reference) and alpha (golden SFT weight).

The loop reads `controller.beta` / `controller.alpha` at every step, so a change applies from the next
step on.
Every change is an event that the loop writes into the run (kind "intervention").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class ControlEvent:
    step: int | None  # step after which the change was made (None before training)
    beta: float  # new beta
    alpha: float  # new alpha
    previous_beta: float
    previous_alpha: float
    reason: str  # why (e.g. "detector: repetition alarm")

    @property
    def message(self) -> str:
        parts = [
            f"{name} {old:g} -> {new:g}"
            for name, old, new in (
                ("beta", self.previous_beta, self.beta),
                ("alpha", self.previous_alpha, self.alpha),
            )
            if old != new
        ]
        return f"{', '.join(parts) or 'no change'}: {self.reason}"


class Controller:
    def __init__(self, *, beta: float, alpha: float) -> None:
        self.beta = float(beta)
        self.alpha = float(alpha)
        self.step: int | None = None  # the loop keeps this at the last finished step
        self._pending: list[ControlEvent] = []

    def set(self, *, beta: float | None = None, alpha: float | None = None, reason: str) -> ControlEvent:
        """Change beta and/or alpha; returns the event (also queued for the loop to record)."""
        new_beta = self.beta if beta is None else float(beta)
        new_alpha = self.alpha if alpha is None else float(alpha)
        if new_beta < 0 or new_alpha < 0:
            raise ValueError(f"beta and alpha must be >= 0, got beta={new_beta}, alpha={new_alpha}")
        event = ControlEvent(
            step=self.step,
            beta=new_beta,
            alpha=new_alpha,
            previous_beta=self.beta,
            previous_alpha=self.alpha,
            reason=reason,
        )
        self.beta, self.alpha = new_beta, new_alpha
        self._pending.append(event)
        return event

    def drain(self) -> list[ControlEvent]:
        """Events not yet recorded, oldest first."""
        events, self._pending = self._pending, []
        return events

    def state_dict(self) -> dict[str, Any]:
        return {
            "beta": self.beta,
            "alpha": self.alpha,
            "step": self.step,
            "pending": [asdict(e) for e in self._pending],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.beta, self.alpha, self.step = float(state["beta"]), float(state["alpha"]), state["step"]
        self._pending = [ControlEvent(**e) for e in state["pending"]]
