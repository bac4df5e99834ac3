"""Where detector news goes: the run's own event log (always) and Weights & Biases (optional).

* :func:`alert_for` turns a state change into an :class:`Alert` (warning -> level WARN, alarm -> ERROR).
* :class:`LocalSink` writes events through the run's :class:`~opdwatch.recorder.Recorder`: ``warning`` /
  ``alarm`` on escalation (with the evidence), ``info`` when the run is healthy again, ``alert`` for every
  alert (with whether wandb took it), and in warn mode an ``info`` for each decision *not* applied. This
  record always exists, because an offline wandb run stores alerts but never delivers them. Decisions that
  are applied are recorded by the knob holder (opdwatch.detector.knobs), the one writer of interventions.
* :class:`WandbSink` sends detector statistics and rate-limited ``run.alert``s into a wandb run: the one the
  training loop logs into (a :class:`~opdwatch.loggers.WandbLogger` it hands over), or one of its own.
  wandb is an optional extra, imported only when a run is started.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from opdwatch.detector.detector import DetectorState
from opdwatch.detector.settings import WandbSettings
from opdwatch.loggers import WandbLogger, send_alert

_LEVEL = {"warning": "WARN", "alarm": "ERROR"}


@dataclass(frozen=True)
class Alert:
    step: int
    level: str   # WARN or ERROR (wandb.AlertLevel names)
    title: str   # < 64 characters (wandb's limit)
    text: str


def alert_for(state: DetectorState, run_name: str = "") -> Alert | None:
    """The alert to send for this state, or None (only escalations into warning/alarm alert)."""
    if not state.escalated or state.level not in _LEVEL:
        return None
    where = f" in {run_name}" if run_name else ""
    title = f"OPD collapse {state.level}{where}"[:63]
    return Alert(step=state.step, level=_LEVEL[state.level], title=title, text=state.message)


class LocalSink:
    """Writes detector events into the run (Recorder.event)."""

    def __init__(self, recorder: Any) -> None:
        self.recorder = recorder

    def state(self, state: DetectorState) -> None:
        if state.escalated:
            self.recorder.event(state.level, step=state.step, message=state.message, reason=state.reason,
                                evidence=[e.as_dict() for e in state.evidence])
        elif state.changed and state.level == "ok":
            self.recorder.event("info", step=state.step, message=f"detector: healthy again after {state.previous}")
        elif state.changed:
            self.recorder.event("info", step=state.step, message=f"detector: {state.previous} -> {state.level}")

    def alert(self, alert: Alert, *, delivered_to: list[str]) -> None:
        self.recorder.event("alert", step=alert.step, message=alert.title, level=alert.level, text=alert.text,
                            delivered_to=delivered_to)

    def not_applied(self, decision: Any, *, mode: str) -> None:
        """What the policy would have done in act mode (warn mode applies nothing)."""
        self.recorder.event("info", step=decision.step, message="warn-only, not applied: " + decision.reason,
                            applied=False, mode=mode, action=decision.action, beta=decision.beta,
                            alpha=decision.alpha)


class WandbSink:
    """Detector statistics and alerts to wandb. With ``logger`` (the training loop's wandb logger) it uses that
    run; otherwise it starts one through :class:`~opdwatch.loggers.WandbLogger` (which reuses an active
    ``wandb.run``) and finishes it on :meth:`close`. Alerts are rate-limited twice: at most one per level every
    ``alert_min_steps`` steps here, and wandb's own ``wait_duration`` for same-title repeats."""

    def __init__(self, settings: WandbSettings, *, name: str = "", config: Mapping[str, Any] | None = None,
                 directory: str | os.PathLike[str] | None = None, logger: Any = None) -> None:
        self.settings = settings
        self._owned = logger is None
        self.logger = WandbLogger(settings, name=name, config=config, directory=directory) if logger is None \
            else logger
        self._last_alert: dict[str, int] = {}

    @property
    def run(self) -> Any:
        """The wandb run (None once closed, or when the logger handed over is not a wandb one)."""
        return getattr(self.logger, "run", None)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        if self.settings.log_metrics:
            self.logger.log(int(step), metrics)

    def alert(self, alert: Alert) -> bool:
        """Send the alert unless rate-limited; returns whether it was sent."""
        last = self._last_alert.get(alert.level)
        if last is not None and alert.step - last < self.settings.alert_min_steps:
            return False
        self._last_alert[alert.level] = alert.step
        return send_alert(self.logger, alert.title, alert.text, level=alert.level,
                          wait_seconds=self.settings.alert_wait_seconds)

    def state_dict(self) -> dict[str, Any]:
        """The rate limit's memory: the step of the last alert sent per level."""
        return {"last_alert": dict(self._last_alert)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._last_alert = {str(level): int(step) for level, step in state["last_alert"].items()}

    def close(self) -> None:
        if self._owned:  # a logger handed over belongs to the loop, which closes it
            self.logger.close()
