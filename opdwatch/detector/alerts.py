"""Where detector news is written: the run's own event log, always.

* :func:`alert_for` turns a state change into an :class:`Alert` (warning -> level WARN, alarm -> ERROR).
* :class:`LocalSink` writes events through the run's :class:`~opdwatch.recorder.Recorder`: ``warning`` /
  ``alarm`` on escalation (with the evidence), ``info`` when the run is healthy again, ``alert`` for every
  alert (its recommendation, what the watch did, where to look, and the channels it went to), an ``info`` per
  delivery (delivered, failed and why, suppressed by the rate limit, dropped from a full queue), and in warn
  mode an ``info`` for each decision *not* applied. This record always exists, because an offline wandb run
  stores alerts but never delivers them. Decisions that are applied are recorded by the knob holder
  (opdwatch.detector.knobs), the one writer of interventions.

Sending alerts out of the process (console, webhook, Slack, e-mail, wandb) is opdwatch.alerts' job;
:class:`WandbSink` is exported from here for older callers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from opdwatch.alerts.wandb_sink import WandbSink
from opdwatch.detector.detector import DetectorState

_LEVEL = {"warning": "WARN", "alarm": "ERROR"}
__all__ = ["Alert", "LocalSink", "WandbSink", "alert_for"]


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

    def alert(self, alert: Alert, *, delivered_to: list[str], **details: Any) -> None:
        """The alert itself; ``details``: the full message (opdwatch.alerts.message.AlertMessage.as_dict)."""
        self.recorder.event("alert", step=alert.step, message=alert.title, level=alert.level, text=alert.text,
                            delivered_to=delivered_to, **details)

    def delivery(self, outcome: Any) -> None:
        """One delivery's outcome (opdwatch.alerts.dispatch.Outcome), as an ``info`` event."""
        verb = {"delivered": "delivered to", "failed": "could not be delivered to", "suppressed": "suppressed for",
                "dropped": "dropped from the queue of"}.get(outcome.status, outcome.status)
        self.recorder.event("info", step=outcome.step if outcome.step >= 0 else None,
                            message=f"alert {verb} {outcome.channel}: {outcome.why}", delivery=outcome.status,
                            channel=outcome.channel, level=outcome.level, title=outcome.title,
                            seconds=round(outcome.seconds, 4))

    def not_applied(self, decision: Any, *, mode: str) -> None:
        """What the policy would have done in act mode (warn mode applies nothing)."""
        self.recorder.event("info", step=decision.step, message="warn-only, not applied: " + decision.reason,
                            applied=False, mode=mode, action=decision.action, beta=decision.beta,
                            alpha=decision.alpha)
