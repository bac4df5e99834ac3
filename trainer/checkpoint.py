"""Atomic checkpoints: model, optimizer, RNG states, controller and step, written to a temp dir then renamed.

A crash mid-save leaves at most a hidden `.tmp-<pid>-*` directory, never a half-written `step-*` checkpoint;
the next save or listing (a resume) removes it once that process is gone (opdwatch.atomic.is_stale_temp).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from opdwatch.atomic import remove_stale_temps

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
