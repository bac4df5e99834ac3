"""Atomic checkpoints: model, optimizer, RNG states, controller and step, written to a temp dir then renamed.

A crash mid-save leaves at most a hidden `.tmp-*` directory, never a half-written `step-*` checkpoint.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

CHECKPOINTS = "checkpoints"


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / CHECKPOINTS / f"step-{step:06d}"


def save_checkpoint(run_dir: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write `state` (tensors, state dicts, plain Python) for `step`; keep the `keep` newest checkpoints."""
    root = run_dir / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
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
    """Complete checkpoints, oldest first."""
    root = run_dir / CHECKPOINTS
    if not root.exists():
        return []
    return sorted(p for p in root.glob("step-*") if (p / "state.pt").exists())


def load_latest(run_dir: Path) -> dict[str, Any] | None:
    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        return None
    return torch.load(
        ckpts[-1] / "state.pt", weights_only=False
    )  # our own file: RNG states are not tensors-only
