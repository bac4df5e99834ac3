"""Recompute a live run's series for some steps only, and splice those rows into the cached frames.

    view = RunView(path, manifest, parts={"steps": [...], "rollouts": [...], "tokens": [...]})
    fresh = step_series(view)                                # the changed steps' rows
    cached = splice(cached, fresh, steps, order=series_order)

Every column of :func:`opdwatch.series.step_series` (and every row of ``length_distribution``) is a
function of one step's files, so a series computed over a :class:`RunView` restricted to the changed steps
holds exactly those steps' rows of the whole run's series.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import polars as pl

from opdwatch.errors import OpdwatchError
from opdwatch.event_log import read_events
from opdwatch.format import TABLES
from opdwatch.reader import read_steps, scan_parts
from opdwatch.run_files import Part
from opdwatch.run_source import RunFacts


class RunView(RunFacts):
    """A :class:`~opdwatch.run_source.RunSource` over given files of a run (a LiveRun's cached list, maybe
    restricted to some steps) instead of a listing of the directory. ``steps`` is the step-metrics frame
    of those files when already read (else they are read on demand)."""

    def __init__(self, path: Path, manifest: dict[str, Any], parts: Mapping[str, list[Part]], *,
                 steps: pl.DataFrame | None = None) -> None:
        self.path = path
        self.manifest = manifest
        self._parts = {table: list(parts.get(table, [])) for table in TABLES}
        self._steps = steps

    def parts(self, table: str, *, min_step: int | None = None) -> list[Part]:
        if table not in TABLES:
            raise OpdwatchError(f"unknown table {table!r} (one of {TABLES})")
        parts = self._parts[table]
        return parts if min_step is None else [p for p in parts if p.step >= min_step]

    def steps(self, phase: str | None = None) -> pl.LazyFrame:
        frame = self._steps if self._steps is not None else read_steps(
            self._parts["steps"], root=self.path, rollouts=self._train_rollouts)
        return (frame if phase is None else frame.filter(pl.col("phase") == phase)).lazy()

    def _train_rollouts(self, steps: Collection[int]) -> list[Part]:
        return [p for p in self._parts["rollouts"] if p.phase == "train" and p.step in steps]

    def rollouts(self, *, min_step: int | None = None) -> pl.LazyFrame:
        return scan_parts(self.parts("rollouts", min_step=min_step), "rollouts")

    def tokens(self, *, min_step: int | None = None) -> pl.LazyFrame:
        return scan_parts(self.parts("tokens", min_step=min_step), "tokens")

    def events(self) -> pl.DataFrame:
        return read_events(self.path)


def splice(cached: pl.DataFrame, fresh: pl.DataFrame, steps: list[int], *,
           order: Callable[[list[str]], list[str]] | None = None) -> pl.DataFrame:
    """``cached`` with the rows of ``steps`` replaced by ``fresh`` (which holds only those steps); ``order``
    gives the column order of the result from its columns."""
    frame = pl.concat([cached.filter(~pl.col("step").is_in(steps)), fresh], how="diagonal_relaxed")
    frame = frame.sort("step", maintain_order=True)
    return frame.select(order(frame.columns)) if order is not None else frame


def series_order(columns: list[str]) -> list[str]:
    """step_series' column order: its fixed leading columns, then the rest sorted."""
    from opdwatch.series import ROLLOUT_SERIES, TOKEN_SERIES, TOKEN_SOURCE  # the analysis layer, loaded late

    first = ["step", *ROLLOUT_SERIES, *TOKEN_SERIES, TOKEN_SOURCE]
    return [c for c in first if c in columns] + sorted(c for c in columns if c not in first)


__all__ = ["RunView", "series_order", "splice"]
