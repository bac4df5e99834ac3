"""The knobs the detector may turn on a TRL trainer, behind the interface the watcher turns them through.

The watcher's policy speaks Stable-OPD: beta (KL to a reference policy) and alpha (weight of golden-data SFT).
TRL's distillation trainers have neither. What has the same effect:

* **alpha -> ``lmbda``** (GKDTrainer, GOLDTrainer). ``lmbda`` is the probability that a micro-batch is the
  student's own rollouts; otherwise it is the dataset's (golden) completions, distilled from the teacher.
  Expected loss = lmbda * on-policy + (1 - lmbda) * golden, so the golden-to-on-policy weight ratio is
  ``alpha = (1 - lmbda) / lmbda`` and a target alpha sets ``lmbda = 1 / (1 + alpha)``: the policy's first raise
  (alpha 0 -> 0.5) takes a fully on-policy run to lmbda 0.67, its cap (alpha 2) to 0.33, and relaxing returns to
  the run's own lmbda. GKD reads ``lmbda`` in every ``training_step``, GOLD at every ``_fill_buffer``, so a
  change acts from the next step.
* **beta**: no TRL counterpart (GKD's and GOLD's ``beta`` is the JSD interpolation, a different thing), so a beta
  target is recorded as not applied.
* **DistillationTrainer** has no on-policy knob at all: the integration saves a checkpoint and stops instead
  (opdwatch.integrations.trl, ``stop_at``), or calls the user's ``on_trouble``.

:class:`TRLKnobs` has the attributes and methods the watcher uses on a
:class:`~opdwatch.detector.knobs.Controller` (``beta``, ``alpha``, ``step``, ``set``, ``note_restore``) and writes
every change through :func:`~opdwatch.detector.knobs.record_events`, the one writer of interventions.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from opdwatch.detector.knobs import ControlEvent, Controller, alpha_of_lmbda, lmbda_of_alpha, record_events


class TRLKnobs:
    """The watcher's knob holder for one TRL trainer. ``knob``: the trainer attribute alpha drives ("lmbda"),
    or None when the trainer has none (every target is then recorded as not applied)."""

    def __init__(self, trainer: Any, knob: str | None, recorder: Any) -> None:
        self._trainer, self._knob, self._recorder = trainer, knob, recorder
        alpha = alpha_of_lmbda(getattr(trainer, knob)) if knob is not None else 0.0
        self._controller = Controller(beta=0.0, alpha=alpha)  # no recorder: events are written here, annotated

    @property
    def beta(self) -> float:
        return self._controller.beta

    @property
    def alpha(self) -> float:
        return self._controller.alpha

    @property
    def step(self) -> int | None:
        return self._controller.step

    @step.setter
    def step(self, value: int | None) -> None:
        self._controller.step = value

    def set(self, *, beta: float | None = None, alpha: float | None = None, reason: str, action: str = "set",
            step: int | None = None) -> ControlEvent:
        """Apply the alpha target to the trainer's knob; record what could not be applied."""
        at = self.step if step is None else step
        before_beta, before_alpha = self.beta, self.alpha
        unapplied = []
        if beta is not None and beta != self.beta:
            unapplied.append(f"beta {self.beta:g} -> {beta:g} (TRL has no KL-to-reference knob)")
        new_alpha = alpha
        if alpha is not None and alpha != self.alpha and self._knob is None:
            unapplied.append(f"alpha {self.alpha:g} -> {alpha:g} ({type(self._trainer).__name__} has no "
                             "on-policy fraction)")
            new_alpha = None
        if new_alpha is not None and new_alpha != self.alpha:
            old = float(getattr(self._trainer, self._knob))
            new = lmbda_of_alpha(new_alpha)
            setattr(self._trainer, self._knob, new)
            self._controller.set(alpha=new_alpha, reason=reason, action=action, step=at)
            events = [dataclasses.replace(e, reason=f"{e.reason}; TRL {self._knob} {old:.3g} -> {new:.3g} "
                                                    f"(golden share {1 - old:.3g} -> {1 - new:.3g})")
                      for e in self._controller.drain()]
            record_events(self._recorder, events)
        if unapplied:
            self._recorder.event("info", step=at, message=f"not applied: {'; '.join(unapplied)}: {reason}",
                                 applied=False, action=action)
        return ControlEvent(step=at, beta=self.beta, alpha=self.alpha, previous_beta=before_beta,
                            previous_alpha=before_alpha, reason=reason, action=action)

    def note_restore(self, *, step: int, reason: str, restored_step: int | None = None, applied: bool = True,
                     outcome: str = "") -> ControlEvent:
        event = self._controller.note_restore(step=step, reason=reason, restored_step=restored_step,
                                              applied=applied, outcome=outcome)
        record_events(self._recorder, self._controller.drain())
        return event
