"""The per-step glue between a training loop and the detector: detect, record, decide, apply, alert.

    watcher = Watcher(WatchConfig(mode="act"), recorder=rec, beta=0.0, alpha=0.0, run_name="demo")
    for step in ...:
        loss = opd + watcher.knobs.beta * kl + watcher.knobs.alpha * sft
        state, decisions = watcher.step(step, rec.record_step(step, ...))
    watcher.close()   # waits at most watch.alerts.timeout_seconds for alerts still being delivered

In "act" mode the watcher applies the policy's decisions to its knobs (an
:class:`~opdwatch.detector.knobs.Controller`: the loop's own, or one made from ``beta``/``alpha`` that writes
each change through ``recorder``), and performs restores through ``restore`` when given one (a function that
rolls the model back to the newest checkpoint at or before a step, returning that checkpoint's step or None).
Without ``restore`` a restore decision is recorded as requested and returned, for the loop to carry out.

Every escalation becomes an alert that says what to do (opdwatch.alerts.recommend, quoting docs/playbook.md),
sent to wandb and the ``watch.alerts`` channels by a background thread (opdwatch.alerts.dispatch); each
delivery is recorded in the run. **The watch never hurts the run**: an exception in the detector, the policy,
the alert or a channel is caught at this boundary (opdwatch.alerts.boundary), recorded as an ``error`` event
with its traceback, printed once, and the step goes on without it; ``watch.strict`` re-raises instead.

Torch-free, so it is tested without the trainer; trainer/loop/watch.py binds it to the trainer's controller,
checkpoints and wandb logger.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from opdwatch.alerts.boundary import Boundary
from opdwatch.alerts.channels import build_channels
from opdwatch.alerts.dispatch import Dispatcher, Outcome
from opdwatch.alerts.recommend import LEVEL_OF_STATE, AlertContext, build_alert
from opdwatch.config_tree import validate_tree
from opdwatch.detector.alerts import Alert, LocalSink, WandbSink
from opdwatch.detector.detector import Detector, DetectorState
from opdwatch.detector.knobs import Controller
from opdwatch.detector.persist import reading
from opdwatch.detector.policy import Decision, InterventionPolicy, describe_change
from opdwatch.detector.settings import WatchConfig

Restore = Callable[[int | None], int | None]  # newest checkpoint at or before a step -> its step, or None


class Watcher:
    def __init__(self, config: WatchConfig, *, recorder: Any = None, knobs: Controller | None = None,
                 beta: float = 0.0, alpha: float = 0.0, logger: Any = None, restore: Restore | None = None,
                 run_name: str = "", run_config: Mapping[str, Any] | None = None,
                 wandb_dir: str | None = None, checkpoints: Callable[[], Sequence[int]] | None = None) -> None:
        """``knobs``: the loop's knob holder (the trainer's controller, which queues its events for the loop
        to write); without it the watcher makes one from ``beta``/``alpha`` that writes through ``recorder``.
        ``logger``: the loop's wandb logger, which then also gets the detector's statistics and alerts;
        without it the watcher starts a wandb run of its own when ``config.wandb.enabled``. ``run_config``
        (the run's config: its learning rate or TRL ``lmbda`` are quoted in alerts) and ``checkpoints`` (the
        steps of the checkpoints saved so far: an alarm names the one to roll back to) shape the advice.
        A channel whose secret's environment variable is unset is a one-line OpdwatchError here."""
        validate_tree(config, "watch")
        self.config = config
        self.knobs = knobs if knobs is not None else Controller(beta=beta, alpha=alpha, recorder=recorder)
        self.detector = Detector(config.detector)
        self.policy = InterventionPolicy(config.policy, base_beta=self.knobs.beta, base_alpha=self.knobs.alpha)
        self.local = LocalSink(recorder) if recorder is not None else None
        self.restore = restore
        self.run_name = run_name
        self.wandb: WandbSink | None = None
        self._logger = logger
        # The wandb sink starts at the first step, not here, so that a failure to start wandb happens inside
        # the caller's training loop (which records the error and marks the run failed).
        own_run = logger is None and config.wandb.enabled
        self._wandb_args = (run_config, wandb_dir) if config.mode != "off" and (own_run or logger is not None) \
            else None
        self.history: list[DetectorState] = []  # escalations and recoveries, for summaries
        self.last_ok_step: int | None = None  # last step the detector called healthy (where restores aim)
        # The wandb sink's rate-limit state from load_state_dict, handed over when the sink starts.
        self._wandb_state: dict[str, Any] = {"last_alert": {}}
        a = config.alerts
        channels, secrets = build_channels(a) if config.mode != "off" else ([], ())
        self.guard = Boundary(recorder, strict=config.strict, scrub=secrets)
        self.dispatcher = Dispatcher(channels, timeout=a.timeout_seconds, queue_size=a.queue_size,
                                     min_steps=a.min_steps, scrub=secrets)
        run_dir = getattr(recorder, "run_dir", None)
        self.context = AlertContext(name=run_name or (Path(run_dir).name if run_dir is not None else ""),
                                    run_dir=None if run_dir is None else Path(run_dir), config=dict(run_config or {}),
                                    dashboard_url=a.dashboard_url, worst_n=a.worst_rollouts, checkpoints=checkpoints,
                                    restore_margin_steps=config.policy.restore_margin_steps)

    def step(self, step: int, metrics: Mapping[str, float]) -> tuple[DetectorState | None, list[Decision]]:
        """Feed one train step. Returns the detector state (None in mode "off", or when the detector failed
        at this step) and the decisions applied (empty unless mode is "act")."""
        if self.config.mode == "off":
            return None, []
        self._start_wandb()
        state: DetectorState | None = None
        with self.guard("detector", step):
            state = self.detector.update(step, metrics)
        if state is None:
            with self.guard("alert delivery", step):
                self._record_deliveries()
            return None, []
        if state.level in ("ok", "warmup"):
            self.last_ok_step = step
        if state.changed:
            self.history.append(state)
            if self.local is not None:
                self.local.state(state)
        beta, alpha = self.knobs.beta, self.knobs.alpha  # before this step's decisions (the alert says both)
        decisions: list[Decision] = []
        applied: list[Decision] = []
        acted: list[str] = []
        with self.guard("policy", step):
            decisions = self.policy.decide(state, step, beta=beta, alpha=alpha)
            if self.config.mode == "act":
                for d in decisions:
                    acted.append(self._apply(d))
                    applied.append(d)
            elif self.local is not None:
                for d in decisions:
                    self.local.not_applied(d, mode=self.config.mode)
        if state.escalated and state.level in LEVEL_OF_STATE:
            with self.guard("alert", step):
                self._alert(state, decisions, acted, beta, alpha)
        if self.wandb is not None:
            with self.guard("wandb", step):
                # a run of our own gets the step metrics too; the loop logs its own into a run it handed over
                own = {k: v for k, v in metrics.items() if isinstance(v, (int, float))} if self._logger is None \
                    else {}
                self.wandb.log(step, {**own, **state.scores()})
        with self.guard("alert delivery", step):
            self._record_deliveries()
        return state, applied

    # ------------------------------------------------------------------------------ acting, alerting
    def _apply(self, d: Decision) -> str:
        """Apply one decision; returns what was done, for the alert."""
        if d.action != "restore":
            before = (self.knobs.beta, self.knobs.alpha)
            self.knobs.set(beta=d.beta, alpha=d.alpha, reason=d.reason, action=d.action, step=d.step)
            change = describe_change(*before, self.knobs.beta, self.knobs.alpha)
            return f"{'raised' if d.action == 'raise' else d.action} {change} (from step {d.step + 1} on)"
        if self.restore is None:  # the loop carries it out (it gets the decision back)
            self.knobs.note_restore(step=d.step, reason=d.reason)
            return "asked the training loop to restore the last healthy checkpoint"
        target = None if self.last_ok_step is None else self.last_ok_step - self.config.policy.restore_margin_steps
        restored = self.restore(target) if target is not None else None
        if restored is None:
            self.knobs.note_restore(step=d.step, reason=d.reason, applied=False,
                                    outcome=f"no checkpoint at or before step {target}")
            return f"tried to roll back, but found no checkpoint at or before step {target}"
        self.knobs.note_restore(step=d.step, reason=d.reason, restored_step=restored,
                                outcome=f"restored step {restored}")
        return f"rolled the student and optimizer back to the checkpoint of step {restored}"

    def _alert(self, state: DetectorState, decisions: list[Decision], acted: list[str], beta: float,
               alpha: float) -> None:
        msg = build_alert(state, self.context, mode=self.config.mode, decisions=decisions, acted=acted, beta=beta,
                          alpha=alpha, policy=self.config.policy, last_ok_step=self.last_ok_step)
        alert = Alert(step=msg.step, level=msg.level, title=msg.title, text=msg.text())
        delivered = []
        if self.wandb is not None:
            outcome = self._wandb_alert(alert)
            if outcome.status == "delivered":
                delivered.append("wandb")
            if self.local is not None:
                self.local.delivery(outcome)
        if self.local is not None:
            details = {k: v for k, v in msg.as_dict().items() if k not in ("step", "level", "title", "text", "run")}
            self.local.alert(alert, delivered_to=delivered,
                             queued_to=[c.name for c in self.dispatcher.channels], **details)
        self.dispatcher.submit(msg)

    def _wandb_alert(self, alert: Alert) -> Outcome:
        """run.alert in the training thread (wandb's own service process does the network); a failure of it
        is a failed delivery and an error event, and the other channels still get the alert."""
        def outcome(status: str, why: str) -> Outcome:
            return Outcome(alert.step, "wandb", alert.level, alert.title, status, why)

        assert self.wandb is not None
        last = self.wandb.rate_limited(alert)
        if last is not None:
            return outcome("suppressed", f"rate limit: the last {alert.level} alert to wandb was at step {last}, at "
                                         f"most one per {self.config.wandb.alert_min_steps} steps")
        try:
            sent = self.wandb.alert(alert)
        except Exception as exc:
            if not self.guard.caught("alert channel wandb", exc, step=alert.step):
                raise
            return outcome("failed", f"{type(exc).__name__}: {exc}")
        return outcome("delivered", "run.alert") if sent else outcome("failed", "the wandb run is closed")

    def _record_deliveries(self, outcomes: list[Outcome] | None = None) -> None:
        for o in self.dispatcher.drain() if outcomes is None else outcomes:
            if self.local is not None:
                self.local.delivery(o)
            if o.traceback:  # a bug in a channel, caught in the delivery thread
                if self.config.strict:
                    raise RuntimeError(f"alert channel {o.channel} failed: {o.why}\n{o.traceback}")
                self.guard.record(f"alert channel {o.channel}", o.why, o.traceback, step=o.step)

    def _start_wandb(self) -> None:
        if self._wandb_args is None:
            return
        run_config, wandb_dir = self._wandb_args
        self._wandb_args = None
        self.wandb = WandbSink(self.config.wandb, name=self.run_name, config=run_config, directory=wandb_dir,
                               logger=self._logger)
        self.wandb.load_state_dict(self._wandb_state)

    # ----------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Detector, policy, alert rate-limit state and the last healthy step (plain JSON-able Python), so a
        resumed run watches exactly as an uninterrupted one. ``history`` is left out: it is this process's
        summary, not something later steps depend on. The knobs are their holder's to save."""
        wandb = self.wandb.state_dict() if self.wandb is not None else {
            "last_alert": dict(self._wandb_state["last_alert"])}
        return {"detector": self.detector.state_dict(), "policy": self.policy.state_dict(), "wandb": wandb,
                "alerts": self.dispatcher.state_dict(), "last_ok_step": self.last_ok_step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict`; a state from other detector/policy settings raises a one-line
        OpdwatchError and leaves this watcher unchanged. (States saved before ``last_ok_step`` was part of
        them have none: the trainer kept it beside them, see trainer/loop/watch.py; states from before the
        alert channels have no ``alerts``.)"""
        with reading("watcher"):
            detector, policy = Detector(self.config.detector), InterventionPolicy(self.config.policy)
            detector.load_state_dict(state["detector"])
            policy.load_state_dict(state["policy"])
            wandb_state = {"last_alert": {str(k): int(v) for k, v in state["wandb"]["last_alert"].items()}}
            last_ok = state.get("last_ok_step")
            last_ok = None if last_ok is None else int(last_ok)
            alerts = {"last": {str(k): int(v) for k, v in state.get("alerts", {}).get("last", {}).items()},
                      "dropped": int(state.get("alerts", {}).get("dropped", 0))}
        self.detector, self.policy, self._wandb_state, self.last_ok_step = detector, policy, wandb_state, last_ok
        self.dispatcher.load_state_dict(alerts)
        if self.wandb is not None:
            self.wandb.load_state_dict(wandb_state)

    def close(self) -> None:
        """Wait at most ``watch.alerts.timeout_seconds`` for deliveries in flight, record them, finish."""
        with self.guard("alert delivery", None):
            self._record_deliveries(self.dispatcher.close())
        if self.wandb is not None:
            self.wandb.close()
            self.wandb = None
