"""A run's headline facts: status, steps, and the last step's health metrics."""

from __future__ import annotations

import math
import time
from typing import Any

import polars as pl

from opdwatch.reader import Run

# The health metrics a person looks at first, in display order, with their labels.
HEADLINE_METRICS = (
    ("rollout/truncation_rate", "rollout truncation rate"),
    ("rollout/repetition_rate", "rollout repetition rate"),
    ("rollout/mean_length", "mean response length (tokens)"),
    ("token/repetitive_share", "repetitive-token share"),
    ("token/adv_repetitive_mean", "advantage, repetitive tokens"),
    ("token/adv_regular_mean", "advantage, regular tokens"),
    ("token/eos_advantage_mean", "advantage, EOS tokens"),
    ("token/teacher_logp_mean", "teacher log-prob"),
    ("token/student_logp_mean", "student log-prob"),
)
STALE_AFTER_S = 600.0


def run_summary(run: Run) -> dict[str, Any]:
    """JSON-ready summary of a run: status (``stale`` when a running run stopped writing), steps, last
    train and val metrics."""
    steps = run.steps().collect()
    status = run.status
    heartbeat = run.manifest.get("heartbeat")
    if status == "running" and isinstance(heartbeat, (int, float)) and time.time() - heartbeat > STALE_AFTER_S:
        status = "stale"
    out: dict[str, Any] = {
        "path": str(run.path), "run_id": run.run_id, "status": status,
        "created_at": run.manifest.get("created_at"), "updated_at": run.manifest.get("updated_at"),
        "steps": int(steps.filter(pl.col("phase") == "train").height),
        "last_step": None, "last_train": {}, "last_val": {},
    }
    for phase in ("train", "val"):
        rows = steps.filter(pl.col("phase") == phase)
        if rows.height:
            last = rows.row(-1, named=True)
            out["last_step" if phase == "train" else "last_val_step"] = int(last["step"])
            out[f"last_{phase}"] = {k: _clean(v) for k, v in last.items() if "/" in k}
    return out


def _clean(value: Any) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)
