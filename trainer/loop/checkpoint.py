"""Checkpoints and resuming: what a checkpoint holds, writing it atomically, restoring it, and what a run
directory that already holds a run means for a new start (refuse, resume, or drop what it recorded).

A checkpoint holds the student, the optimizer, the RNG streams, the controller, the step (and the watch's state),
written to a temp dir then renamed: a crash mid-save leaves at most a hidden `.tmp-<pid>-*` directory, never a
half-written `step-*` checkpoint; the next save or listing (a resume) removes it once that process is gone
(opdwatch.atomic.is_stale_temp).
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from opdwatch.atomic import remove_stale_temps
from opdwatch.errors import OpdwatchError
from opdwatch.format import EVENTS_DIR, MANIFEST, TABLES
from opdwatch.trainer.config import TrainConfig
from opdwatch.trainer.loop.components import Components
from opdwatch.trainer.loop.controller import Controller
from opdwatch.trainer.parallel.distributed import SINGLE, DistEnv
from opdwatch.trainer.parallel.fsdp import full_model_state, full_optimizer_state, is_sharded, load_full_state

CHECKPOINTS = "checkpoints"


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / CHECKPOINTS / f"step-{step:06d}"


def save_checkpoint(run_dir: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write `state` (tensors, state dicts, plain Python) for `step`; keep the `keep` newest checkpoints."""
    root = run_dir / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(root, prefix=".tmp-")
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-", dir=root))  # the pid: see is_stale_temp
    try:
        torch.save(state, tmp / "state.pt")
        final = checkpoint_dir(run_dir, step)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (and the leftovers of killed saves removed: only rank 0 saves,
    and this runs in rank 0's save and restore and in every rank's resume, when no save is under way)."""
    root = run_dir / CHECKPOINTS
    if not root.exists():
        return []
    remove_stale_temps(root, prefix=".tmp-")
    return sorted(p for p in root.glob("step-*") if (p / "state.pt").exists())


def load_latest(run_dir: Path) -> dict[str, Any] | None:
    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        return None
    return torch.load(
        ckpts[-1] / "state.pt", weights_only=False
    )  # our own file: RNG states are not tensors-only


def checkpoint_state(
    step: int,
    components: Components,
    optimizer: torch.optim.Optimizer,
    controller: Controller,
    sampler_rng: torch.Generator,
    prompt_rng: random.Random,
    config: TrainConfig,
    watch_state: dict[str, Any] | None = None,
) -> dict:
    """Everything a resume needs to continue as if uninterrupted. `watch_state` is `TrainerWatch.state_dict()`
    (detector baselines/statistics and policy cooldowns; None when the watch is off): passed in, not the watch,
    because the watch imports this module to find the checkpoints it restores."""
    sharded = is_sharded(components.student)
    state = {
        "step": step,
        # FSDP: full tensors gathered from the shards (same layout as one process), optimizer state by name
        "student": full_model_state(components.student) if sharded else components.student.state_dict(),
        "optimizer": full_optimizer_state(components.student, optimizer) if sharded else optimizer.state_dict(),
        "optimizer_keys": "names" if sharded else "ids",
        "controller": controller.state_dict(),
        "rng": {
            "torch": torch.get_rng_state(),
            "sampler": sampler_rng.get_state(),
            "prompts": prompt_rng.getstate(),
        },
    }
    if config.warmup.steps and config.models.reference == "student":
        state["reference"] = components.reference.state_dict()  # the warmed-up student is not on disk elsewhere
    state["watch"] = watch_state
    return state


def restore(
    ckpt: dict,
    components: Components,
    optimizer: torch.optim.Optimizer,
    controller: Controller,
    sampler_rng: torch.Generator,
    prompt_rng: random.Random,
) -> None:
    """Load a `checkpoint_state` into the run's student (and reference), optimizer, controller and RNG streams;
    the watch's entry is the loop's to hand to `TrainerWatch.resume`."""
    if is_sharded(components.student) and ckpt.get("optimizer_keys") != "names":
        raise OpdwatchError("this checkpoint was written without FSDP: resume it with distributed.fsdp=false")
    if ckpt.get("optimizer_keys") == "names":
        load_full_state(components.student, optimizer, ckpt["student"], ckpt["optimizer"])
    else:
        components.student.load_state_dict(ckpt["student"])
        optimizer.load_state_dict(ckpt["optimizer"])
    if components.rollout_copy is not None:
        components.rollout_copy.refresh(components.student)
    if "reference" in ckpt:
        components.reference.load_state_dict(ckpt["reference"])
    controller.load_state_dict(ckpt["controller"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    sampler_rng.set_state(ckpt["rng"]["sampler"])
    prompt_rng.setstate(ckpt["rng"]["prompts"])


def continue_from(run_dir: Path, *, resume: bool, overwrite: bool, env: DistEnv = SINGLE) -> tuple[dict | None, bool]:
    """The checkpoint to continue from, and whether the run recorded in `run_dir` is to be dropped first.

    Refusals name the way forward. A run killed before its first checkpoint has nothing to continue from, so
    `--resume` starts it again from scratch (it would otherwise be stuck: a fresh start refuses a recorded run).
    """
    if resume and overwrite:
        raise OpdwatchError("--resume and --overwrite exclude each other")
    recorded = (run_dir / MANIFEST).exists()
    if overwrite:
        return None, recorded
    if not resume:
        if recorded:
            raise OpdwatchError(f"{run_dir}: a run is already recorded here: --resume continues it (from its latest "
                                "checkpoint, or from scratch if it has none), --overwrite replaces it, or choose a "
                                "new run.name")
        return None, False
    ckpt = load_latest(run_dir)
    if ckpt is not None:
        return ckpt, False
    if not recorded:
        raise OpdwatchError(f"{run_dir}: no run is recorded here to resume: start it without --resume")
    if env.is_main:
        warnings.warn(f"{run_dir}: no checkpoint to resume from (the run stopped before its first one): starting "
                      "it again from scratch and dropping what it recorded", UserWarning, stacklevel=2)
    return None, True


def drop_recorded(run_dir: Path) -> None:
    """Delete what opdwatch recorded in `run_dir` (tables, events, checkpoints, manifest) and nothing else."""
    for name in (*TABLES, EVENTS_DIR, CHECKPOINTS):
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    (run_dir / MANIFEST).unlink(missing_ok=True)  # last: a drop cut short still looks recorded, so is redone
