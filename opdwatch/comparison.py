"""The multi-run comparison table of `opdwatch analyze` (the layout of Table 2 in "Demystifying OPD": one row
per arm, the arms' accuracy side by side), with the collapse facts beside the accuracy.

    rows = comparison_rows(analyses)          # one dict per run, JSON-ready
    COMPARISON_COLUMNS                        # (key, heading) in table order

Validation accuracy is the sampled one the trainer records (`val/rollout/accuracy`, the paper's avg@k at the
run's val temperature) and, when the run also validated greedily (trainer `val.greedy_too`), the greedy one
(`val/greedy/accuracy`). "first" is the first validation (step 0 in the trainer), "final" the last, "best" the
highest with its step. Peak truncation is the largest train rollout truncation rate, with its step; onset is
the analysis' onset step (None: no onset).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import polars as pl

from opdwatch.metric_defs import TRUNCATION_RATE, VAL_ACCURACY

if TYPE_CHECKING:  # annotations only: analysis imports nothing from here
    from opdwatch.analysis import RunAnalysis

VAL_GREEDY_ACCURACY = "val/greedy/accuracy"  # logged into the val row by the trainer's greedy validation

# (key of a row, heading); *_step keys are shown inside their value's cell
COMPARISON_COLUMNS: tuple[tuple[str, str], ...] = (
    ("arm", "arm"),
    ("beta", "β (KL)"),
    ("alpha", "α (golden SFT)"),
    ("val_accuracy_first", "val acc, first"),
    ("val_accuracy_final", "val acc, final"),
    ("val_accuracy_best", "val acc, best"),
    ("greedy_accuracy_first", "greedy acc, first"),
    ("greedy_accuracy_final", "greedy acc, final"),
    ("greedy_accuracy_best", "greedy acc, best"),
    ("peak_truncation", "peak truncation"),
    ("onset_step", "onset step"),
    ("verdict", "verdict"),
)


def _finite(value: Any) -> float | None:
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def series_facts(series: pl.DataFrame, column: str) -> dict[str, Any]:
    """First, final and best (max) finite value of `column` with their steps; Nones when it has none."""
    empty = {"first": None, "first_step": None, "final": None, "final_step": None, "best": None, "best_step": None}
    if column not in series.columns:
        return empty
    values = series.select("step", pl.col(column).cast(pl.Float64)).drop_nulls(column).filter(
        pl.col(column).is_finite()).sort("step")
    if values.height == 0:
        return empty
    steps, col = values["step"].to_list(), values[column].to_list()
    best = max(range(len(col)), key=lambda i: (col[i], -i))  # the earliest step of the best value
    return {"first": col[0], "first_step": int(steps[0]), "final": col[-1], "final_step": int(steps[-1]),
            "best": col[best], "best_step": int(steps[best])}


def _knob(analysis: RunAnalysis, name: str) -> float | None:
    manifest = analysis.run.manifest
    manifest = manifest() if callable(manifest) else manifest
    opd = (manifest.get("config") or {}).get("opd") if isinstance(manifest, dict) else None
    return _finite(opd.get(name)) if isinstance(opd, dict) else None


def comparison_row(analysis: RunAnalysis) -> dict[str, Any]:
    """One arm's row: its knobs (β, α from the run's config when it has them), accuracy, truncation, onset."""
    s = analysis.series
    acc, greedy, trunc = (series_facts(s, c) for c in (VAL_ACCURACY, VAL_GREEDY_ACCURACY, TRUNCATION_RATE))
    row: dict[str, Any] = {"arm": analysis.label, "beta": _knob(analysis, "beta"), "alpha": _knob(analysis, "alpha")}
    for prefix, facts in (("val_accuracy", acc), ("greedy_accuracy", greedy)):
        for part in ("first", "final", "best"):
            row[f"{prefix}_{part}"] = facts[part]
            row[f"{prefix}_{part}_step"] = facts[f"{part}_step"]
    row.update({"peak_truncation": trunc["best"], "peak_truncation_step": trunc["best_step"],
                "onset_step": analysis.onset.step, "verdict": analysis.verdict.label})
    return row


def comparison_rows(analyses: Sequence[RunAnalysis]) -> list[dict[str, Any]]:
    return [comparison_row(a) for a in analyses]


def cell_text(row: dict[str, Any], key: str) -> str:
    """A row's cell as text: numbers to 3 decimals, with their step where the row has one; '-' for none."""
    value = row.get(key)
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    step = row.get(f"{key}_step")
    text = f"{value:.3f}" if key not in ("beta", "alpha") else f"{value:g}"
    return text if step is None or key.endswith("_first") else f"{text} (step {step})"


def shown_columns(rows: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """The columns with a value in some row (no greedy columns for runs without greedy validation)."""
    return [(k, h) for k, h in COMPARISON_COLUMNS if k == "arm" or any(r.get(k) is not None for r in rows)]


def _arrow(row: dict[str, Any], prefix: str) -> str | None:
    first, final, best = (row.get(f"{prefix}_{p}") for p in ("first", "final", "best"))
    if final is None:
        return None
    head = "" if first is None else f"{first:.2f} → "
    return f"{head}{final:.2f} (best {best:.2f} @{row.get(f'{prefix}_best_step')})"


def compact_cells(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """A narrower form of the same table for terminals: headings and one list of cells per row, accuracy as
    ``first → final (best B @step)``; columns no row has a value for are left out."""
    columns: list[tuple[str, Any]] = [
        ("arm", lambda r: r["arm"]),
        ("β / α", lambda r: None if r["beta"] is None and r["alpha"] is None
         else f"{cell_text(r, 'beta')} / {cell_text(r, 'alpha')}"),
        ("val acc (sampled)", lambda r: _arrow(r, "val_accuracy")),
        ("val acc (greedy)", lambda r: _arrow(r, "greedy_accuracy")),
        ("peak truncation", lambda r: None if r["peak_truncation"] is None
         else f"{r['peak_truncation']:.2f} @{r['peak_truncation_step']}"),
        ("onset", lambda r: "-" if r["onset_step"] is None else str(r["onset_step"])),
        ("verdict", lambda r: r["verdict"]),
    ]
    cells = [[fn(r) for _, fn in columns] for r in rows]
    keep = [i for i in range(len(columns)) if any(c[i] is not None for c in cells)]
    return [columns[i][0] for i in keep], [["-" if c[i] is None else c[i] for i in keep] for c in cells]
