"""The knobs a detector may turn mid-run: beta (KL to the reference) and alpha (golden SFT weight), and the
one record of what was done to the run.

    knobs = Controller(beta=0.0, alpha=0.0, recorder=rec)   # a loop of your own: changes are written at once
    knobs.set(beta=0.2, reason="repetition alarm")          # -> an "intervention" event
    loss = opd + knobs.beta * kl + knobs.alpha * sft        # read every step: a change applies from the next

`Controller` is the only holder of beta/alpha: the trainer's loop (trainer/loop/loop.py) and the early-warning
watcher (opdwatch/detector/watcher.py) both use it, and the intervention policy only proposes targets.
Every change, and every restore noted on it, is a :class:`ControlEvent`, written by :func:`record_events`
and nothing else (kind "intervention"; a restore that found no checkpoint is an "info"). With a recorder
the controller writes each event when it happens; without one it queues them for :meth:`Controller.drain`:
the trainer's loop writes them on rank 0 once per step, after its step hooks and the distributed sync.
Torch-free.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any


# TRL's GKD/GOLD trainers have no α: their on-policy fraction ``lmbda`` plays its part. Expected loss =
# lmbda·on-policy + (1 − lmbda)·golden, so the golden-to-on-policy weight ratio is α = (1 − lmbda)/lmbda. One
# definition, used by the TRL knobs (act mode) and by the alerts' recommendation (what to set by hand).
def alpha_of_lmbda(lmbda: float) -> float:
    """Golden-to-on-policy weight ratio of an on-policy fraction ``lmbda`` in (0, 1]."""
    return (1.0 - float(lmbda)) / float(lmbda)


def lmbda_of_alpha(alpha: float) -> float:
    """The on-policy fraction whose golden share has weight ratio ``alpha`` >= 0."""
    return 1.0 / (1.0 + float(alpha))


@dataclass(frozen=True)
class ControlEvent:
    step: int | None  # step after which the change was made (None before training)
    beta: float  # beta from then on
    alpha: float  # alpha from then on
    previous_beta: float
    previous_alpha: float
    reason: str  # why (e.g. "detector: repetition alarm")
    action: str = "set"  # "set" (by hand or a step hook), "raise"/"relax" (the policy) or "restore"
    applied: bool = True  # False: a restore that found nothing to restore (recorded as "info")
    outcome: str = ""  # restores: what happened ("restored step 12"), appended to the message
    restored_step: int | None = None  # restores: the step of the checkpoint loaded

    @property
    def message(self) -> str:
        if self.action == "restore":
            return f"{self.reason}: {self.outcome}" if self.outcome else self.reason
        changes = [f"{name} {old:g} -> {new:g}" for name, old, new in
                   (("beta", self.previous_beta, self.beta), ("alpha", self.previous_alpha, self.alpha)) if old != new]
        return f"{', '.join(changes) or 'no change'}: {self.reason}"

    @property
    def kind(self) -> str:
        return "intervention" if self.applied else "info"

    def data(self) -> dict[str, Any]:
        """The event's data fields in the run's event log."""
        if self.action == "restore":
            extra = {} if self.restored_step is None else {"restored_step": self.restored_step}
            return {"action": "restore", "applied": self.applied, "reason": self.reason, **extra}
        return {"beta": self.beta, "alpha": self.alpha, "previous_beta": self.previous_beta,
                "previous_alpha": self.previous_alpha, "reason": self.reason, "action": self.action,
                "applied": self.applied}


def record_events(recorder: Any, events: Iterable[ControlEvent]) -> None:
    """Write control events into the run (``recorder.event``): the one writer of intervention events."""
    for e in events:
        recorder.event(e.kind, step=e.step, message=e.message, **e.data())


class Controller:
    def __init__(self, *, beta: float, alpha: float, recorder: Any = None) -> None:
        self.beta = float(beta)
        self.alpha = float(alpha)
        self.step: int | None = None  # the loop keeps this at the last finished step
        self.recorder = recorder  # None: events wait in drain() for the loop to write them
        self._pending: list[ControlEvent] = []

    def set(self, *, beta: float | None = None, alpha: float | None = None, reason: str, action: str = "set",
            step: int | None = None) -> ControlEvent:
        """Change beta and/or alpha (None = unchanged); returns the event (written or queued). ``step``
        defaults to :attr:`step`."""
        new_beta = self.beta if beta is None else float(beta)
        new_alpha = self.alpha if alpha is None else float(alpha)
        if new_beta < 0 or new_alpha < 0:
            raise ValueError(f"beta and alpha must be >= 0, got beta={new_beta}, alpha={new_alpha}")
        event = ControlEvent(step=self.step if step is None else step, beta=new_beta, alpha=new_alpha,
                             previous_beta=self.beta, previous_alpha=self.alpha, reason=reason, action=action)
        self.beta, self.alpha = new_beta, new_alpha
        return self._emit(event)

    def note_restore(self, *, step: int, reason: str, restored_step: int | None = None, applied: bool = True,
                     outcome: str = "") -> ControlEvent:
        """Record a rollback of the model (which leaves beta/alpha as they are), written like any change."""
        return self._emit(ControlEvent(step=step, beta=self.beta, alpha=self.alpha, previous_beta=self.beta,
                                       previous_alpha=self.alpha, reason=reason, action="restore", applied=applied,
                                       outcome=outcome, restored_step=restored_step))

    def _emit(self, event: ControlEvent) -> ControlEvent:
        if self.recorder is not None:
            record_events(self.recorder, [event])
        else:
            self._pending.append(event)
        return event

    def drain(self) -> list[ControlEvent]:
        """Events not yet written, oldest first."""
        events, self._pending = self._pending, []
        return events

    def state_dict(self) -> dict[str, Any]:
        return {"beta": self.beta, "alpha": self.alpha, "step": self.step,
                "pending": [asdict(e) for e in self._pending]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.beta, self.alpha, self.step = float(state["beta"]), float(state["alpha"]), state["step"]
        # events of older checkpoints lack the newer fields: their defaults are what those events were
        self._pending = [ControlEvent(**e) for e in state["pending"]]
