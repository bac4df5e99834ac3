"""The per-step glue between a training loop and the detector: detect, record, alert, decide.

    watcher = Watcher(WatchConfig(mode="act"), recorder=rec, beta=0.0, alpha=0.0, run_name="demo")
    state, decisions = watcher.step(step, metrics, beta=ctl.beta, alpha=ctl.alpha)
    for d in decisions:           # only in "act" mode; the caller applies them to its beta/alpha knobs
        ctl.set(beta=d.beta, alpha=d.alpha, reason=d.reason)

Torch-free, so it is tested without the trainer; trainer/watch.py binds it to the trainer's controller.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opdwatch.detector.alerts import LocalSink, WandbSink, alert_for
from opdwatch.detector.detector import Detector, DetectorState
from opdwatch.detector.persist import reading
from opdwatch.detector.policy import Decision, InterventionPolicy
from opdwatch.detector.settings import WatchConfig


class Watcher:
    def __init__(self, config: WatchConfig, *, recorder: Any = None, beta: float = 0.0, alpha: float = 0.0,
                 run_name: str = "", run_config: Mapping[str, Any] | None = None,
                 wandb_dir: str | None = None, record_decisions: bool = True) -> None:
        """``record_decisions=False`` when the caller records what it applies itself (the trainer's loop writes
        an ``intervention`` event per controller change, trainer/watch.py one per restore)."""
        config.validate()
        self.config = config
        self.detector = Detector(config.detector)
        self.policy = InterventionPolicy(config.policy, beta=beta, alpha=alpha)
        self.local = LocalSink(recorder) if recorder is not None else None
        self.run_name = run_name
        self.record_decisions = record_decisions
        self.wandb: WandbSink | None = None
        # wandb starts at the first step, not here, so that a failure to start it happens inside the
        # caller's training loop (which records the error and marks the run failed).
        self._wandb_args = (run_config, wandb_dir) if config.mode != "off" and config.wandb.enabled else None
        self.history: list[DetectorState] = []  # escalations and recoveries, for summaries
        # The wandb sink's rate-limit state from load_state_dict, handed over when the sink starts.
        self._wandb_state: dict[str, Any] = {"last_alert": {}}

    def step(self, step: int, metrics: Mapping[str, float], *, beta: float | None = None,
             alpha: float | None = None) -> tuple[DetectorState | None, list[Decision]]:
        """Feed one train step. Returns the detector state (None in mode "off") and the decisions to apply
        (empty unless mode is "act")."""
        if self.config.mode == "off":
            return None, []
        if self._wandb_args is not None:
            run_config, wandb_dir = self._wandb_args
            self._wandb_args = None
            self.wandb = WandbSink(self.config.wandb, name=self.run_name, config=run_config, directory=wandb_dir)
            self.wandb.load_state_dict(self._wandb_state)
        state = self.detector.update(step, metrics)
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
            self.wandb.log(step, {**{k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                                  **state.scores()})
        if beta is not None and alpha is not None:
            self.policy.observe(beta=beta, alpha=alpha)
        decisions = self.policy.decide(state, step)
        act = self.config.mode == "act"
        if self.local is not None and (self.record_decisions or not act):
            for d in decisions:  # in act mode a "restore" is recorded as requested; the caller performs it
                self.local.decision(d, applied=act, mode=self.config.mode)
        if not act:
            # warn-only: the knobs did not move, so the policy must not believe they did
            if beta is not None and alpha is not None:
                self.policy.observe(beta=beta, alpha=alpha)
            return state, []
        return state, decisions

    def state_dict(self) -> dict[str, Any]:
        """Detector, policy and alert rate-limit state (plain JSON-able Python), so a resumed run watches
        exactly as an uninterrupted one. ``history`` is left out: it is this process's summary, not
        something later steps depend on."""
        wandb = self.wandb.state_dict() if self.wandb is not None else {
            "last_alert": dict(self._wandb_state["last_alert"])}
        return {"detector": self.detector.state_dict(), "policy": self.policy.state_dict(), "wandb": wandb}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict`; a state from other detector/policy settings raises a one-line
        OpdwatchError and leaves this watcher unchanged."""
        with reading("watcher"):
            detector, policy = Detector(self.config.detector), InterventionPolicy(self.config.policy)
            detector.load_state_dict(state["detector"])
            policy.load_state_dict(state["policy"])
            wandb_state = {"last_alert": {str(k): int(v) for k, v in state["wandb"]["last_alert"].items()}}
        self.detector, self.policy, self._wandb_state = detector, policy, wandb_state
        if self.wandb is not None:
            self.wandb.load_state_dict(wandb_state)

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.close()
            self.wandb = None
