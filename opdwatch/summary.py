"""A run's headline facts: status, steps, and the last step's health metrics.

The step facts (train steps, first and last step, missing steps, steps with an unknown truncation rate,
the collapse step) are :class:`opdwatch.step_table.StepFacts`, the fields ``analyze --json`` and
``detect --json`` print too.
"""

from __future__ import annotations

import math
import time
from typing import Any

import polars as pl

from opdwatch.metric_defs import (
    ADV_REGULAR_MEAN,
    ADV_REPETITIVE_MEAN,
    EOS_ADVANTAGE_MEAN,
    MEAN_LENGTH,
    REPETITION_RATE,
    REPETITIVE_SHARE,
    STUDENT_LOGP_MEAN,
    TEACHER_LOGP_MEAN,
    TRUNCATION_RATE,
)
from opdwatch.run_source import RunSource
from opdwatch.step_table import facts_of

# The health metrics a person looks at first, in display order, with their labels.
HEADLINE_METRICS = (
    (TRUNCATION_RATE, "rollout truncation rate"),
    (REPETITION_RATE, "rollout repetition rate"),
    (MEAN_LENGTH, "mean response length (tokens)"),
    (REPETITIVE_SHARE, "repetitive-token share"),
    (ADV_REPETITIVE_MEAN, "advantage, repetitive tokens"),
    (ADV_REGULAR_MEAN, "advantage, regular tokens"),
    (EOS_ADVANTAGE_MEAN, "advantage, EOS tokens"),
    (TEACHER_LOGP_MEAN, "teacher log-prob"),
    (STUDENT_LOGP_MEAN, "student log-prob"),
)
STALE_AFTER_S = 600.0


def run_summary(run: RunSource) -> dict[str, Any]:
    """JSON-ready summary of a run: status (``stale`` when a running run stopped writing), step facts,
    last train and val metrics."""
    steps = run.steps().collect()
    facts = facts_of(steps)
    status = run.status
    heartbeat = run.manifest.get("heartbeat")
    if status == "running" and isinstance(heartbeat, (int, float)) and time.time() - heartbeat > STALE_AFTER_S:
        status = "stale"
    out: dict[str, Any] = {
        "path": str(run.path), "run_id": run.run_id, "status": status,
        "created_at": run.manifest.get("created_at"), "updated_at": run.manifest.get("updated_at"),
        **facts.as_dict(), "last_train": {}, "last_val": {},
    }
    for phase in ("train", "val"):
        rows = steps.filter(pl.col("phase") == phase)
        if rows.height:
            last = rows.row(-1, named=True)
            if phase == "val":
                out["last_val_step"] = int(last["step"])
            out[f"last_{phase}"] = {k: _clean(v) for k, v in last.items() if "/" in k}
    return out


def _clean(value: Any) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)
