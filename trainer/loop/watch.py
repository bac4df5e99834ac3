"""The trainer's early-warning hook: once per OPD step, after the step is recorded, feed its metrics to the
detector (opdwatch/detector/watcher.py), which writes warnings/alarms/alerts into the run and in
``watch.mode: act`` applies the policy's decisions to the loop's controller and restores healthy checkpoints.

    watch = TrainerWatch(config.watch, rec, controller=controller, logger=wandb_logger, run_name=config.run.name,
                         restore=lambda max_step: restore_healthy(run_dir, max_step, student, optimizer))
    ...
    watch(step, summary)                 # in the step loop, after recording
    state["watch"] = watch.state_dict()  # in a checkpoint; on resume: watch.resume(ckpt.get("watch"), step)
    watch.close()                        # after the loop

Every change and restore becomes an event on the controller, which the loop writes (one writer of
interventions: opdwatch.detector.knobs.record_events); this hook writes nothing itself but the note that a
resume starts afresh. The wandb run is the loop's (its logger), so alerts land where the step metrics are;
the other channels are ``watch.alerts`` (opdwatch.alerts). Alerts quote the run's config (``opd.lr``) and name
the checkpoint to roll back to. An exception inside the watch never stops training: it becomes an ``error``
event and the step goes on (``watch.strict=true`` re-raises, for tests and CI).
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
from opdwatch.trainer.loop.checkpoint import list_checkpoints
from opdwatch.trainer.loop.controller import Controller

Restore = Callable[[int | None], int | None]  # newest checkpoint at or before a step -> its step, or None


def _no_restore(max_step: int | None) -> int | None:
    return None  # torchrun runs (and tests without checkpoints): a restore finds nothing, and says so


class TrainerWatch:
    def __init__(self, config: WatchConfig, recorder: Any, *, controller: Controller, logger: Any = None,
                 run_name: str = "", restore: Restore | None = None) -> None:
        self.config = config
        self.recorder = recorder
        run_dir = getattr(recorder, "run_dir", None)  # (tests hand over a bare event sink)
        saved = None if run_dir is None else (
            lambda: [int(p.name.split("-")[1]) for p in list_checkpoints(Path(run_dir))])
        self.watcher = Watcher(config, recorder=recorder, knobs=controller, logger=logger, run_name=run_name,
                               restore=restore or _no_restore,
                               run_config=getattr(recorder, "manifest", {}).get("config", {}), checkpoints=saved)
        self.last_state: DetectorState | None = None

    @property
    def last_ok_step(self) -> int | None:
        """Last step the detector called healthy (a restore goes ``restore_margin_steps`` before it)."""
        return self.watcher.last_ok_step

    def __call__(self, step: int, metrics: Mapping[str, float]) -> DetectorState | None:
        if self.config.mode == "off":
            return None
        self.last_state, _ = self.watcher.step(step, metrics)
        return self.last_state

    def state_dict(self) -> dict[str, Any] | None:
        """The watch's state for a checkpoint (plain Python, see opdwatch/detector/persist.py), or None when
        the watch is off (then there is nothing to continue: other ranks, or a run not being watched)."""
        if self.config.mode == "off":
            return None
        state = None
        with self.watcher.guard("watch state", None):  # a checkpoint without it resumes the watch afresh
            state = {"watcher": self.watcher.state_dict()}
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict`; raises a one-line OpdwatchError for a state from other
        detector/policy settings (and changes nothing then)."""
        with reading("watch"):
            watcher = dict(state["watcher"])
            if "last_ok_step" not in watcher:  # checkpoints from before it moved into the watcher's state
                watcher["last_ok_step"] = state["last_ok_step"]
        self.watcher.load_state_dict(watcher)

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
