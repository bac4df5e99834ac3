"""The trainer's early-warning hook: once per OPD step, after the step is recorded, feed its metrics
to the detector, write warnings/alarms/alerts into the run, and in ``watch.mode: act`` apply the policy's
decisions through the beta/alpha controller (and optionally restore a healthy checkpoint).

    watch = TrainerWatch(config.watch, rec, run_name=config.run.name, run_config=config_to_dict(config),
                         wandb_dir=run_dir, restore=lambda max_step: restore_healthy(run_dir, max_step, ...))
    ...
    watch(step, summary, controller)     # in the step loop, after recording
    state["watch"] = watch.state_dict()  # in a checkpoint; on resume: watch.resume(ckpt.get("watch"), step)
    watch.close()                        # after the loop

Beta/alpha changes go through ``controller.set(reason=...)``, whose events the loop records as
``intervention`` events; this hook records the rest (state changes, alerts, restores).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from opdwatch.detector.detector import DetectorState
from opdwatch.detector.persist import reading
from opdwatch.detector.settings import WatchConfig
from opdwatch.detector.watcher import Watcher
from opdwatch.errors import OpdwatchError
from trainer.checkpoint import list_checkpoints
from trainer.controller import Controller

Restore = Callable[[int], int | None]  # restore the newest checkpoint at or before a step; its step or None


class TrainerWatch:
    def __init__(self, config: WatchConfig, recorder: Any, *, run_name: str = "",
                 run_config: Mapping[str, Any] | None = None, wandb_dir: str | Path | None = None,
                 restore: Restore | None = None, beta: float = 0.0, alpha: float = 0.0) -> None:
        self.config = config
        self.recorder = recorder
        self.restore = restore
        # record_decisions=False: the loop writes an "intervention" event for every controller change.
        self.watcher = Watcher(config, recorder=recorder, beta=beta, alpha=alpha, run_name=run_name,
                               run_config=run_config, wandb_dir=None if wandb_dir is None else str(wandb_dir),
                               record_decisions=False)
        self.last_ok_step: int | None = None  # last step the detector called healthy
        self.last_state: DetectorState | None = None

    def __call__(self, step: int, metrics: Mapping[str, float], controller: Controller) -> DetectorState | None:
        if self.config.mode == "off":
            return None
        state, decisions = self.watcher.step(step, metrics, beta=controller.beta, alpha=controller.alpha)
        self.last_state = state
        if state is not None and state.level in ("ok", "warmup"):
            self.last_ok_step = step
        for d in decisions:
            if d.action in ("raise", "relax"):
                controller.set(beta=d.beta, alpha=d.alpha, reason=d.reason)
            elif d.action == "restore":
                self._restore(step, d.reason)
        return state

    def state_dict(self) -> dict[str, Any] | None:
        """The watch's state for a checkpoint (plain Python, see opdwatch/detector/persist.py), or None when
        the watch is off (then there is nothing to continue: other ranks, or a run not being watched)."""
        if self.config.mode == "off":
            return None
        return {"watcher": self.watcher.state_dict(), "last_ok_step": self.last_ok_step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict`; raises a one-line OpdwatchError for a state from other
        detector/policy settings (and changes nothing then)."""
        with reading("watch"):
            last_ok = None if state["last_ok_step"] is None else int(state["last_ok_step"])
            self.watcher.load_state_dict(state["watcher"])
        self.last_ok_step = last_ok

    def resume(self, state: Mapping[str, Any] | None, step: int) -> None:
        """On resume after ``step``: continue from a checkpoint's ``"watch"`` entry, so that the resumed run
        watches exactly as an uninterrupted one. Without usable state (a checkpoint older than this, a watch
        that was off, or other watch settings now) the watch starts afresh, re-estimating its baselines over
        ``warmup_steps`` steps, and says so in the run's events rather than stopping the resume."""
        if self.config.mode == "off":
            return
        if state is None:
            why = "the checkpoint holds no watch state"
        else:
            try:
                self.load_state_dict(state)
                return
            except OpdwatchError as exc:
                why = str(exc)
        self.recorder.event("info", step=step, message=f"watch starts afresh after the resume: {why}")

    def _restore(self, step: int, reason: str) -> None:
        margin = self.config.policy.restore_margin_steps
        target = None if self.last_ok_step is None else self.last_ok_step - margin
        restored = self.restore(target) if self.restore is not None and target is not None else None
        if restored is None:
            self.recorder.event("info", step=step, message=f"{reason}: no checkpoint at or before step {target}",
                                action="restore", applied=False)
        else:
            self.recorder.event("intervention", step=step, message=f"{reason}: restored step {restored}",
                                action="restore", applied=True, restored_step=restored)

    def close(self) -> None:
        self.watcher.close()


def restore_healthy(run_dir: Path, max_step: int, student: torch.nn.Module,
                    optimizer: torch.optim.Optimizer) -> int | None:
    """Load the student and optimizer state of the newest checkpoint saved at or before ``max_step``.

    Only weights and optimizer move back; the step counter, RNG streams and the controller keep going, so
    the run continues forward in steps with the raised beta/alpha (a restore is a rollback of the model,
    not of the run record). Returns the checkpoint's step, or None when there is none that old.
    """
    for path in reversed(list_checkpoints(run_dir)):
        ckpt_step = int(path.name.split("-")[1])
        if ckpt_step <= max_step:
            state = torch.load(path / "state.pt", weights_only=False)  # our own file
            student.load_state_dict(state["student"])
            optimizer.load_state_dict(state["optimizer"])
            return ckpt_step
    return None
