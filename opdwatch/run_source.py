"""What analysis reads of a run: the :class:`RunSource` protocol.

    def step_series(run: RunSource) -> pl.DataFrame: ...

Implemented by :class:`opdwatch.reader.Run` (a run directory as it stands), :class:`opdwatch.live.LiveRun` (a
run followed while it is written: the frames as of its last tick) and :class:`opdwatch.live.RunView` (a
``LiveRun``'s file list restricted to some steps: what a tick recomputes the changed steps' series rows
from). The series, drill-down and replay functions are typed against it, so any of them can be analysed and
none pretends to be another. ``LiveRun``'s one-step drill-down is ``step_rollouts(step)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import polars as pl

from opdwatch.run_files import Part


class RunSource(Protocol):
    """A run's manifest, file list and tables, as analysis reads them."""

    @property
    def path(self) -> Path: ...

    @property
    def manifest(self) -> dict[str, Any]: ...

    @property
    def run_id(self) -> str: ...

    @property
    def status(self) -> str: ...

    def parts(self, table: str, *, min_step: int | None = None) -> list[Part]:
        """The readable files of ``table``, sorted by (step, rank, phase); ``min_step`` keeps newer ones."""
        ...

    def steps(self, phase: str | None = None) -> pl.LazyFrame:
        """Step metrics, one row per (step, phase); metric columns are Float64, missing ones null."""
        ...

    def rollouts(self, *, min_step: int | None = None) -> pl.LazyFrame: ...

    def tokens(self, *, min_step: int | None = None) -> pl.LazyFrame: ...

    def events(self) -> pl.DataFrame:
        """The events log, time-ordered (:data:`opdwatch.event_log.EVENT_SCHEMA`)."""
        ...


class RunFacts:
    """``run_id`` and ``status`` from ``manifest``, for every class that reads a run."""

    path: Path
    manifest: dict[str, Any]

    @property
    def status(self) -> str:
        return str(self.manifest.get("status", "unknown"))

    @property
    def run_id(self) -> str:
        return str(self.manifest.get("run_id", self.path.name))


__all__ = ["RunFacts", "RunSource"]
