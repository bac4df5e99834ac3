"""Step-metric files shared by several formats: a metrics JSONL ({"step": N, ...} per line) and the optional
second metrics source (``--metrics``: a wandb run or such a JSONL) of formats whose own files carry none."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from opdwatch.importers.jsonl import as_int, read_jsonl, skipped_warning
from opdwatch.importers.metric_map import numeric_items
from opdwatch.importers.model import ImportedRun, ImportOptions

Unwrap = Callable[[dict[str, Any]], dict[str, Any]]


def metrics_jsonl(path: Path, run: ImportedRun, unwrap: Unwrap = lambda row: row, step_key: str = "step") -> int:
    """Add the step metrics of a metrics JSONL to ``run``; returns the number of rows read. Lines that do not
    parse, and rows without an integer step, are counted in one warning."""
    skipped: list[str] = []
    stepless = 0
    rows = 0
    for row in read_jsonl(path, skipped):
        step = as_int(row.get(step_key))
        if step is None:
            stepless += 1
            continue
        rows += 1
        values = numeric_items({k: v for k, v in unwrap(row).items() if k != step_key})
        run.step(step).metrics.update(values)
    if (warning := skipped_warning(f"lines in {path.name}", skipped)) is not None:
        run.warnings.append(warning)
    if stepless:
        run.warnings.append(f"{path.name}: {stepless} rows without a step number were left out")
    run.files.append(str(path))
    return rows


def merge_metrics(run: ImportedRun, options: ImportOptions) -> None:
    """Add the step metrics of ``options.metrics`` (a wandb run file/folder, or a metrics JSONL) to ``run``."""
    path = options.metrics
    if path is None:
        return
    if path.suffix == ".jsonl":
        metrics_jsonl(path, run)
        return
    from opdwatch.importers import wandb_file  # protobuf classes only when a wandb run is read

    wandb_file.add_history(run, wandb_file.read_history(path, options))
