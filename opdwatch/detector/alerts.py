"""Where detector news goes: the run's own event log (always) and Weights & Biases (optional).

* :func:`alert_for` turns a state change into an :class:`Alert` (warning -> level WARN, alarm -> ERROR).
* :class:`LocalSink` writes events through the run's :class:`~opdwatch.recorder.Recorder`: ``warning`` /
  ``alarm`` on escalation (with the evidence), ``info`` when the run is healthy again, ``alert`` for every
  alert (with whether wandb took it), ``intervention`` for decisions. This record always exists, because an
  offline wandb run stores alerts but never delivers them.
* :class:`WandbSink` logs step metrics plus detector statistics and sends ``run.alert``. wandb is an
  optional extra, imported only when this sink is built.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from opdwatch.detector.detector import DetectorState
from opdwatch.detector.settings import WandbSettings
from opdwatch.errors import OpdwatchError

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

    def decision(self, decision: Any, *, applied: bool, mode: str) -> None:
        kind = "intervention" if applied else "info"
        prefix = "" if applied else "warn-only, not applied: "
        self.recorder.event(kind, step=decision.step, message=prefix + decision.reason, applied=applied,
                            mode=mode, action=decision.action, beta=decision.beta, alpha=decision.alpha)


class WandbSink:
    """Step metrics and alerts to wandb. Reuses an active ``wandb.run``; otherwise starts one (and finishes it
    on :meth:`close`). Alerts are rate-limited twice: at most one per level every ``alert_min_steps`` steps
    here, and wandb's own ``wait_duration`` for same-title repeats."""

    def __init__(self, settings: WandbSettings, *, name: str = "", config: Mapping[str, Any] | None = None,
                 directory: str | os.PathLike[str] | None = None) -> None:
        try:
            import wandb  # optional extra: only imported when wandb logging is switched on
        except ImportError:
            raise OpdwatchError("watch.wandb.enabled needs wandb: pip install 'opdwatch[wandb]'") from None
        self._wandb = wandb
        self.settings = settings
        self._owned = wandb.run is None
        if self._owned:
            kwargs: dict[str, Any] = {"project": settings.project, "name": name or None,
                                      "config": dict(config or {})}
            if settings.entity:
                kwargs["entity"] = settings.entity
            if settings.mode:
                kwargs["mode"] = settings.mode
            if directory is not None:
                kwargs["dir"] = str(directory)
            self.run = wandb.init(**kwargs)
        else:
            self.run = wandb.run
        self._last_alert: dict[str, int] = {}

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        if self.settings.log_metrics:
            self.run.log({k: float(v) for k, v in metrics.items()}, step=int(step))

    def alert(self, alert: Alert) -> bool:
        """Send the alert unless rate-limited; returns whether it was sent."""
        last = self._last_alert.get(alert.level)
        if last is not None and alert.step - last < self.settings.alert_min_steps:
            return False
        self._last_alert[alert.level] = alert.step
        level = getattr(self._wandb.AlertLevel, alert.level)
        self.run.alert(title=alert.title, text=alert.text, level=level,
                       wait_duration=self.settings.alert_wait_seconds)
        return True

    def state_dict(self) -> dict[str, Any]:
        """The rate limit's memory: the step of the last alert sent per level."""
        return {"last_alert": dict(self._last_alert)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._last_alert = {str(level): int(step) for level, step in state["last_alert"].items()}

    def close(self) -> None:
        if self._owned and self.run is not None:
            self.run.finish()
            self.run = None
