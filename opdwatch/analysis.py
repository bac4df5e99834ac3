"""Analyse one run directory: its step series, onset, verdict and headline facts (what `opdwatch analyze`
prints and what report.html draws).

    result = analyze_run(open_run("runs/opd"))
    result.verdict.label, result.onset.step, result.facts.steps, result.summary()["latest"]

The step facts (train steps, first and last step, missing steps, steps with an unknown truncation rate, the
collapse step) come from the run's step table (:mod:`opdwatch.step_table`), as in ``info`` and ``detect``;
the onset, episodes and verdict from the step series over the steps with a known truncation rate.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from opdwatch.errors import CorruptRunError, OpdwatchError
from opdwatch.metric_defs import VAL_ACCURACY, VAL_TRUNCATION_RATE
from opdwatch.onset import Onset, find_onset
from opdwatch.reader import Run, RunReadWarning, open_run
from opdwatch.run_source import RunSource
from opdwatch.series import Progress, length_distribution, step_series, token_source_note
from opdwatch.step_table import StepFacts, facts_of
from opdwatch.summary import HEADLINE_METRICS
from opdwatch.verdict import Verdict, verdict

# The latest-health columns the summary reports (train unless prefixed val/), with their labels.
LATEST = (*HEADLINE_METRICS, (VAL_TRUNCATION_RATE, "validation truncation rate"),
          (VAL_ACCURACY, "validation accuracy"))


@dataclass(frozen=True)
class RunAnalysis:
    run: RunSource
    label: str
    series: pl.DataFrame       # step_series
    lengths: pl.DataFrame      # length_distribution (train)
    events: pl.DataFrame
    onset: Onset
    verdict: Verdict
    facts: StepFacts           # of the run's step table: what info and detect report too

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary: status, step facts, onset, verdict with reasons, latest health metrics."""
        latest: dict[str, Any] = {}
        for column, _ in LATEST:
            if column in self.series.columns:
                values = self.series.select("step", column).drop_nulls(column)
                if values.height:
                    step, value = values.row(-1)
                    latest[column] = {"step": int(step), "value": _clean(value)}
        kinds = self.events.group_by("kind").len().sort("kind").iter_rows() if self.events.height else []
        return {
            "label": self.label, "path": str(self.run.path), "run_id": self.run.run_id, "status": self.run.status,
            **self.facts.as_dict(),  # steps, first/last step, missing_steps, truncation_unknown, collapse_step
            "onset_step": self.onset.step, "onset": self.onset.as_dict(),
            "verdict": self.verdict.label, "reasons": list(self.verdict.reasons),
            **self.verdict.json_fields(),  # verdict_kind, episodes, current, regimes
            "token_series": token_source_note(self.series),
            "events": dict(kinds), "latest": latest,
        }


def analyze_run(run: RunSource, *, label: str | None = None, progress: Progress | None = None) -> RunAnalysis:
    """Series, length distribution, events, onset and verdict of ``run``. Raises a one-line
    :class:`OpdwatchError` for an empty run or unreadable table data."""
    try:
        series = step_series(run, progress=progress)
        lengths = length_distribution(run)
        facts = facts_of(run.steps().collect())
    except (pl.exceptions.PolarsError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CorruptRunError(f"{run.path}: unreadable run data ({type(exc).__name__}: {first[:200]})") from None
    if series.height == 0:
        raise OpdwatchError(f"{run.path}: empty run (no steps recorded yet)")
    onset = find_onset(series)
    return RunAnalysis(run=run, label=label or run.run_id, series=series, lengths=lengths, events=run.events(),
                       onset=onset, verdict=verdict(series, onset), facts=facts)


def open_checked(path: str | Path, *, skip_corrupt: bool = False) -> Run:
    """:func:`open_run`, but a Parquet file the reader would skip is an error unless ``skip_corrupt``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RunReadWarning)
        run = open_run(path)
    skipped = [w for w in caught if issubclass(w.category, RunReadWarning)]
    if skipped and not skip_corrupt:
        more = f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""
        raise CorruptRunError(f"{skipped[0].message}{more}; --skip-corrupt analyses the rest")
    for w in skipped:
        warnings.warn(str(w.message), RunReadWarning, stacklevel=2)
    return run


def unique_labels(runs: Sequence[RunSource]) -> list[str]:
    """Run labels for overlays: the run id, made unique with the directory name (then an index)."""
    labels = []
    for run in runs:
        label = run.run_id
        if label in labels:
            label = f"{run.run_id} ({run.path.name})"
        while label in labels:
            label = f"{label}'"
        labels.append(label)
    return labels


def _clean(value: Any) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)
