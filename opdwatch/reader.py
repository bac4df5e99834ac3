"""Open a run directory, finished or still being written, as polars frames.

    run = open_run("runs/exp1")
    run.steps("train").collect()       # one row per step: the paper's Figs 2-4 series
    run.rollouts().filter(pl.col("repetitive")).collect()
    run.tokens().filter(pl.col("step") == 40).collect()
    run.events()                         # DataFrame of the events log

A :class:`Run` is a :class:`~opdwatch.run_source.RunSource`. The file list is taken once per
:meth:`Run.refresh` (:mod:`opdwatch.run_files`: hidden temp files are never listed, a file or directory that
cannot be used is skipped with a :class:`RunReadWarning` naming it instead of failing the whole read); the
step table is resolved by :mod:`opdwatch.step_table` (a step recorded twice, out of order, an unknown
truncation rate: decided there for every reader, warned once per Run); the events log is parsed by
:mod:`opdwatch.event_log`. Readers never write or delete anything in the run.

Run paths are plain paths, never patterns: a run may live at ``exp[seed]`` or ``runs/lr=1e-4*``, so
files are listed with ``os.scandir`` and scanned with :func:`scan_files` (``glob=False``, absolute paths:
polars would otherwise expand ``[...]``, ``*``, ``?``, a leading ``~`` and read ``file:`` as a URL).
"""

from __future__ import annotations

import warnings
from collections.abc import Collection
from pathlib import Path
from typing import Any

import polars as pl

from opdwatch.errors import OpdwatchError
from opdwatch.event_log import events_files, read_events
from opdwatch.format import TABLES
from opdwatch.manifest import read_manifest
from opdwatch.run_files import (
    TABLE_SCHEMAS,
    Part,
    RunReadWarning,
    StepTableWarning,
    part_order,
    read_part,
    scan_files,
    step_dirs,
    step_files,
)
from opdwatch.run_source import RunFacts
from opdwatch.segments import Coverage, Segment, list_segments, scan_part_rows
from opdwatch.step_table import RolloutFiles, StepFacts, StepTable, StepWarnings, read_table


class Run(RunFacts):
    """A read-only view of one run directory. Call :meth:`refresh` to see what was written since."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.manifest: dict[str, Any] = read_run_manifest(self.path)
        self._parts: dict[str, list[Part]] = {}
        self._meta_cache: dict[tuple[str, int, int], Part | None] = {}
        self._step_warnings = StepWarnings()
        self.segments: list[Segment] = []
        self.refresh()

    # ------------------------------------------------------------------------------- listing
    def refresh(self) -> Run:
        """Re-read the manifest and the file list (cheap: footers of files already seen are cached).

        Compacted segments (format 1.1, :mod:`opdwatch.segments`) supersede the step partitions they cover:
        the step partitions are listed first and the segments after, so a compaction committing meanwhile
        cannot hide rows (it deletes nothing before its commit); the footers of partitions already covered
        are not read at all."""
        self.manifest = read_run_manifest(self.path)
        while True:
            before = list_segments(self.path)
            listed = {table: self._list(table, Coverage(before)) for table in TABLES}
            segments = list_segments(self.path)
            if {s.path for s in before} <= {s.path for s in segments}:
                break  # else a segment was retired meanwhile (a resume un-compacting): list again
        coverage = Coverage(segments)
        for table in TABLES:
            parts = [p for p in listed[table] if p.step not in coverage]
            parts += [p for seg in segments for p in seg.parts(table)]
            self._parts[table] = sorted(parts, key=part_order)
        self.segments = segments
        return self

    def parts(self, table: str, *, min_step: int | None = None) -> list[Part]:
        """The readable files of ``table``, sorted by (step, rank, phase); ``min_step`` keeps newer ones."""
        if table not in TABLES:
            raise OpdwatchError(f"unknown table {table!r} (one of {TABLES})")
        parts = self._parts[table]
        return parts if min_step is None else [p for p in parts if p.step >= min_step]

    def _list(self, table: str, covered: Coverage) -> list[Part]:
        out = []
        for step, directory in step_dirs(self.path / table):
            if step in covered:
                continue
            for path, (size, mtime) in step_files(directory).items():
                key = (str(path), size, mtime)
                if key not in self._meta_cache:  # a file version's footer is read (and warned about) once
                    self._meta_cache[key] = read_part(path, table)
                part = self._meta_cache[key]
                if part is not None:
                    out.append(part)
        return out

    # ------------------------------------------------------------------------------- tables
    def steps(self, phase: str | None = None) -> pl.LazyFrame:
        """Step metrics, one row per (step, phase), sorted by step; metric columns are Float64, missing ones
        null (the semantics of damaged or odd tables: :mod:`opdwatch.step_table`)."""
        frame = self.step_table().frame
        return (frame if phase is None else frame.filter(pl.col("phase") == phase)).lazy()

    def step_table(self) -> StepTable:
        """The resolved step table, read from the files as they are now (each call reads them again, as
        :meth:`steps` always did); what is odd about it is warned once per Run."""
        table = read_table(self.parts("steps"), root=self.path, rollouts=self._train_rollouts)
        self._step_warnings.warn(self.path, table)
        return table

    def step_facts(self) -> StepFacts:
        """Train steps, first/last step, gaps, unknown truncation and the collapse step."""
        return self.step_table().facts

    def _train_rollouts(self, steps: Collection[int]) -> list[Part]:
        return [p for p in self.parts("rollouts") if p.phase == "train" and p.step in steps]

    def rollouts(self, *, min_step: int | None = None) -> pl.LazyFrame:
        return scan_parts(self.parts("rollouts", min_step=min_step), "rollouts")

    def tokens(self, *, min_step: int | None = None) -> pl.LazyFrame:
        return scan_parts(self.parts("tokens", min_step=min_step), "tokens")

    def events(self) -> pl.DataFrame:
        return read_events(self.path)

    # ------------------------------------------------------------------------------- facts
    @property
    def step_numbers(self) -> list[int]:
        return sorted({p.step for p in self.parts("steps")})


def open_run(path: str | Path) -> Run:
    """Open a run directory; raises a one-line :class:`OpdwatchError` when it is not a readable v1 run."""
    return Run(path)


def read_run_manifest(path: Path) -> dict[str, Any]:
    """:func:`opdwatch.manifest.read_manifest`, with a run directory the user may not enter as a one-line
    error (a PermissionError from the manifest's stat would otherwise reach the CLI as an internal error)."""
    try:
        return read_manifest(path)
    except PermissionError:
        raise OpdwatchError(f"{path}: permission denied") from None


# ----------------------------------------------------------------------------------------- tables
def read_steps(parts: list[Part], *, root: str | Path | None = None,
               rollouts: RolloutFiles | None = None) -> pl.DataFrame:
    """The step table of these step-metric files (:func:`opdwatch.step_table.read_table`), warning about
    what is odd in it on every call (a reader that reads its table more than once, like :class:`Run`,
    warns once through :class:`~opdwatch.step_table.StepWarnings`)."""
    table = read_table(parts, root=root, rollouts=rollouts)
    text = table.describe()
    if text is not None:
        warnings.warn(f"{root}: {text}" if root is not None else text, StepTableWarning, stacklevel=2)
    return table.frame


def scan_parts(parts: list[Part], table: str) -> pl.LazyFrame:
    """A lazy scan of these files of the rollout or token table, in the table's schema (so a frame read
    through any reader is exactly what :meth:`Run.rollouts` / :meth:`Run.tokens` give)."""
    schema = TABLE_SCHEMAS[table]
    if not parts:
        return pl.LazyFrame(schema=schema)
    return scan_part_rows(parts, schema)


# Re-exported: the reader's public names from before they moved to their own modules.
__all__ = ["Part", "Run", "RunReadWarning", "StepTableWarning", "events_files", "open_run", "read_events",
           "read_part", "read_run_manifest", "read_steps", "scan_files", "scan_parts", "step_dirs", "step_files"]
