"""The per-step glue between a training loop and the detector: detect, record, alert, decide, apply.

    watcher = Watcher(WatchConfig(mode="act"), recorder=rec, beta=0.0, alpha=0.0, run_name="demo")
    for step in ...:
        loss = opd + watcher.knobs.beta * kl + watcher.knobs.alpha * sft
        state, decisions = watcher.step(step, rec.record_step(step, ...))

In "act" mode the watcher applies the policy's decisions to its knobs (an
:class:`~opdwatch.detector.knobs.Controller`: the loop's own, or one made from ``beta``/``alpha`` that writes
each change through ``recorder``), and performs restores through ``restore`` when given one (a function that
rolls the model back to the newest checkpoint at or before a step, returning that checkpoint's step or None).
Without ``restore`` a restore decision is recorded as requested and returned, for the loop to carry out.

Torch-free, so it is tested without the trainer; trainer/loop/watch.py binds it to the trainer's controller,
checkpoints and wandb logger.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from opdwatch.config_tree import validate_tree
from opdwatch.detector.alerts import LocalSink, WandbSink, alert_for
from opdwatch.detector.detector import Detector, DetectorState
from opdwatch.detector.knobs import Controller
from opdwatch.detector.persist import reading
from opdwatch.detector.policy import Decision, InterventionPolicy
from opdwatch.detector.settings import WatchConfig

Restore = Callable[[int | None], int | None]  # newest checkpoint at or before a step -> its step, or None


class Watcher:
    def __init__(self, config: WatchConfig, *, recorder: Any = None, knobs: Controller | None = None,
                 beta: float = 0.0, alpha: float = 0.0, logger: Any = None, restore: Restore | None = None,
                 run_name: str = "", run_config: Mapping[str, Any] | None = None,
                 wandb_dir: str | None = None) -> None:
        """``knobs``: the loop's knob holder (the trainer's controller, which queues its events for the loop
        to write); without it the watcher makes one from ``beta``/``alpha`` that writes through ``recorder``.
        ``logger``: the loop's wandb logger, which then also gets the detector's statistics and alerts;
        without it the watcher starts a wandb run of its own when ``config.wandb.enabled``."""
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

    def step(self, step: int, metrics: Mapping[str, float]) -> tuple[DetectorState | None, list[Decision]]:
        """Feed one train step. Returns the detector state (None in mode "off") and the decisions applied
        (empty unless mode is "act")."""
        if self.config.mode == "off":
            return None, []
        self._start_wandb()
        state = self.detector.update(step, metrics)
        if state.level in ("ok", "warmup"):
            self.last_ok_step = step
        if state.changed:
            self.history.append(state)
            if self.local is not None:
                self.local.state(state)
        alert = alert_for(state, self.run_name)
        if alert is not None:
            delivered = ["wandb"] if self.wandb is not None and self.wandb.alert(alert) else []
            if self.local is not None:
                self.local.alert(alert, delivered_to=delivered)
        if self.wandb is not None:
            # a run of our own gets the step metrics too; the loop logs its own into a run it handed over
            own = {k: v for k, v in metrics.items() if isinstance(v, (int, float))} if self._logger is None else {}
            self.wandb.log(step, {**own, **state.scores()})
        decisions = self.policy.decide(state, step, beta=self.knobs.beta, alpha=self.knobs.alpha)
        if self.config.mode != "act":
            if self.local is not None:
                for d in decisions:
                    self.local.not_applied(d, mode=self.config.mode)
            return state, []
        for d in decisions:
            self._apply(d)
        return state, decisions

    def _apply(self, d: Decision) -> None:
        if d.action != "restore":
            self.knobs.set(beta=d.beta, alpha=d.alpha, reason=d.reason, action=d.action, step=d.step)
        elif self.restore is None:  # the loop carries it out (it gets the decision back)
            self.knobs.note_restore(step=d.step, reason=d.reason)
        else:
            target = None if self.last_ok_step is None else self.last_ok_step - self.config.policy.restore_margin_steps
            restored = self.restore(target) if target is not None else None
            if restored is None:
                self.knobs.note_restore(step=d.step, reason=d.reason, applied=False,
                                        outcome=f"no checkpoint at or before step {target}")
            else:
                self.knobs.note_restore(step=d.step, reason=d.reason, restored_step=restored,
                                        outcome=f"restored step {restored}")

    def _start_wandb(self) -> None:
        if self._wandb_args is None:
            return
        run_config, wandb_dir = self._wandb_args
        self._wandb_args = None
        self.wandb = WandbSink(self.config.wandb, name=self.run_name, config=run_config, directory=wandb_dir,
                               logger=self._logger)
        self.wandb.load_state_dict(self._wandb_state)

    def state_dict(self) -> dict[str, Any]:
        """Detector, policy, alert rate-limit state and the last healthy step (plain JSON-able Python), so a
        resumed run watches exactly as an uninterrupted one. ``history`` is left out: it is this process's
        summary, not something later steps depend on. The knobs are their holder's to save."""
        wandb = self.wandb.state_dict() if self.wandb is not None else {
            "last_alert": dict(self._wandb_state["last_alert"])}
        return {"detector": self.detector.state_dict(), "policy": self.policy.state_dict(), "wandb": wandb,
                "last_ok_step": self.last_ok_step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict`; a state from other detector/policy settings raises a one-line
        OpdwatchError and leaves this watcher unchanged. (States saved before ``last_ok_step`` was part of
        them have none: the trainer kept it beside them, see trainer/loop/watch.py.)"""
        with reading("watcher"):
            detector, policy = Detector(self.config.detector), InterventionPolicy(self.config.policy)
            detector.load_state_dict(state["detector"])
            policy.load_state_dict(state["policy"])
            wandb_state = {"last_alert": {str(k): int(v) for k, v in state["wandb"]["last_alert"].items()}}
            last_ok = state.get("last_ok_step")
            last_ok = None if last_ok is None else int(last_ok)
        self.detector, self.policy, self._wandb_state, self.last_ok_step = detector, policy, wandb_state, last_ok
        if self.wandb is not None:
            self.wandb.load_state_dict(wandb_state)

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.close()
            self.wandb = None
