"""Compacted segments of a run (format 1.1): what readers see of them.

    for seg in list_segments(run_dir):            # committed segments, oldest steps first
        seg.first_step, seg.last_step              # the steps it holds: their step partitions are superseded
        seg.parts("tokens")                        # one Part per (step, rank, phase) slice of its files

A segment is a directory ``compacted/steps=AAAAAA-BBBBBB/`` holding the rows of every table file of steps
A..B, one Parquet file per table and phase, plus ``segment.json`` (its index: row counts per (step, rank,
phase), columns) and two sidecars, ``token-aggregates.parquet`` and ``rollout-aggregates.parquet`` (the step
series' per-step aggregates of its tokens and rollouts, computed from the files it replaced by the series' own
queries, so a cold open reads no token row of it). It is built under a hidden name and renamed into place by
:mod:`opdwatch.compaction`: that rename is the commit. The reader's rule: **a committed segment supersedes
every table file of the step partitions in its range**, whether or not they are still on disk, so a reader
never sees both copies and a compaction killed at any instant leaves either the old files or the segment.

Readers list the step partitions first and the segments second: a compaction deletes nothing before its
commit, so a segment committed after the second listing deleted nothing the first listing saw.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from opdwatch.format import FORMAT_MINOR
from opdwatch.run_files import Part, entries, scan_files, skipped, why

COMPACTED_DIR = "compacted"
INDEX = "segment.json"
TOKEN_AGGREGATES = "token-aggregates.parquet"  # the series' token aggregates of the train tokens
ROLLOUT_AGGREGATES = "rollout-aggregates.parquet"  # the series' rollout aggregates, both phases
SEGMENT_FORMAT = "opdwatch-segment"
_PREFIX = "steps="


def segment_name(first: int, last: int) -> str:
    return f"{_PREFIX}{first:06d}-{last:06d}"


def parse_segment_name(name: str) -> tuple[int, int] | None:
    """(first, last) step of a committed segment's directory name, or None (temp dirs, strays)."""
    if not name.startswith(_PREFIX):
        return None
    first, sep, last = name[len(_PREFIX):].partition("-")
    if not sep or not first.isdigit() or not last.isdigit() or int(first) > int(last):
        return None
    return int(first), int(last)


@dataclass(frozen=True)
class Segment:
    path: Path
    first_step: int
    last_step: int
    index: dict[str, Any] = field(repr=False, compare=False)
    _parts: dict[str, list[Part]] = field(default_factory=dict, repr=False, compare=False)

    def covers(self, step: int) -> bool:
        return self.first_step <= step <= self.last_step

    def parts(self, table: str) -> list[Part]:
        """One :class:`Part` per (step, rank, phase) of ``table`` in this segment, in part order."""
        if table not in self._parts:
            out = []
            for phase, spec in sorted(self.index.get("files", {}).get(table, {}).items()):
                path = self.path / spec["name"]
                columns = tuple(spec["columns"])
                for step, rank, rows in spec["parts"]:
                    out.append(Part(path, int(step), int(rank), phase, columns, int(rows),
                                    file_rows=int(spec["rows"])))
            out.sort(key=lambda p: (p.step, p.rank, p.phase))
            self._parts[table] = out
        return self._parts[table]


def read_segment(path: Path) -> Segment | None:
    """The committed segment at ``path``, or None (not a segment name; unreadable index: warned)."""
    span = parse_segment_name(path.name)
    if span is None:
        return None
    try:
        st = os.stat(path / INDEX)
        key = (os.path.abspath(path), st.st_ino, st.st_mtime_ns)
        if key in _INDEX_CACHE:  # a segment never changes: its index is parsed once per process
            return _INDEX_CACHE[key]
        index = json.loads((path / INDEX).read_text(encoding="utf-8"))
        if index.get("format") != SEGMENT_FORMAT or (index["first_step"], index["last_step"]) != span:
            raise ValueError("index does not match the directory")
    except FileNotFoundError:
        return None  # retired since the listing (a resume un-compacting it)
    except Exception as exc:  # noqa: BLE001 - any damaged index is skipped alike, naming it
        skipped(f"{path}: skipped unreadable compacted segment ({why(exc)})")
        return None
    if len(_INDEX_CACHE) >= 4096:  # bounded: a long-lived dashboard sees many runs
        _INDEX_CACHE.clear()
    _INDEX_CACHE[key] = seg = Segment(path, span[0], span[1], index)
    return seg


_INDEX_CACHE: dict[tuple[str, int, int], Segment] = {}


def list_segments(run_dir: Path, allows: Any = None) -> list[Segment]:
    """The committed segments of a run, by first step. Overlapping segments cannot come from the compactor
    (it holds a lock and compacts only uncovered steps); one that overlaps an earlier one is skipped with a
    warning rather than read twice."""
    out: list[Segment] = []
    for entry in entries(run_dir / COMPACTED_DIR):
        path = Path(entry.path)
        if allows is not None and not allows(path):
            continue
        seg = read_segment(path)
        if seg is None:
            continue
        if out and seg.first_step <= out[-1].last_step:
            skipped(f"{path}: skipped compacted segment overlapping {out[-1].path.name}")
            continue
        out.append(seg)
    return out


class Coverage:
    """Which steps the segments supersede (binary search over their sorted ranges)."""

    def __init__(self, segments: Iterable[Segment]) -> None:
        self.spans = [(s.first_step, s.last_step) for s in segments]

    def __contains__(self, step: int) -> bool:
        import bisect

        i = bisect.bisect_right(self.spans, (step, float("inf"))) - 1
        return i >= 0 and self.spans[i][0] <= step <= self.spans[i][1]


# ----------------------------------------------------------------------------------------- scanning
def scan_part_rows(parts: Iterable[Part], schema: pl.Schema | dict[str, Any], *,
                   file_column: str | None = None) -> pl.LazyFrame:
    """A lazy scan of the rows of these Parts: whole files as they are, segment slices filtered to their
    (step, rank) (all of a segment file unfiltered when every slice of it is asked for). Runs of whole files
    and of one segment file keep the order of ``parts``."""
    groups: list[tuple[Path | None, list[Part]]] = []
    for part in parts:
        key = part.path if part.file_rows is not None else None
        if groups and groups[-1][0] == key:
            groups[-1][1].append(part)
        else:
            groups.append((key, [part]))
    frames = []
    for key, group in groups:
        if key is None:
            frames.append(scan_files([p.path for p in group], schema, file_column=file_column))
            continue
        frame = scan_files([key], schema, file_column=file_column)
        if sum(p.num_rows for p in group) != group[0].file_rows:
            frame = frame.filter(_slice_filter(group))
        frames.append(frame)
    if not frames:
        return pl.LazyFrame(schema=schema)
    return frames[0] if len(frames) == 1 else pl.concat(frames, how="vertical")


def _slice_filter(group: list[Part]) -> pl.Expr:
    steps = sorted({p.step for p in group})
    # a range test first: polars prunes the segment's row groups by their step statistics
    cond = pl.col("step").is_between(steps[0], steps[-1]) & pl.col("step").is_in(steps)
    ranks = {p.rank for p in group}
    if len(ranks) > 1 or len(steps) > 1:
        keys = sorted({p.step * 1_000_003 + p.rank for p in group})
        cond = cond & (pl.col("step") * 1_000_003 + pl.col("rank").cast(pl.Int64)).is_in(keys)
    else:
        cond = cond & (pl.col("rank") == next(iter(ranks)))
    return cond


def precomputed(by_step: dict[int, list[Part]], sidecar: str, rows: str, *,
                phase: str | None = None) -> tuple[pl.DataFrame | None, set[int]]:
    """Sidecar rows (``sidecar`` in the segment: :data:`TOKEN_AGGREGATES` or :data:`ROLLOUT_AGGREGATES`) of
    the steps whose files (``by_step``: one table, one phase) are all slices of one segment and hold exactly
    the rows the sidecar was computed from (its ``rows`` column); returns (rows, steps served)."""
    sidecars: dict[Path, list[int]] = {}
    counts: dict[int, int] = {}
    for step, files in by_step.items():
        homes = {p.path.parent for p in files}
        if len(homes) == 1 and all(p.file_rows is not None for p in files):
            sidecars.setdefault(next(iter(homes)) / sidecar, []).append(step)
            counts[step] = sum(p.num_rows for p in files)
    frames = []
    for path, steps in sidecars.items():
        try:
            frame = pl.read_parquet(os.path.abspath(path), glob=False)
        except Exception:  # noqa: BLE001 - no sidecar (or a damaged one): those steps are aggregated
            continue
        if phase is not None:
            frame = frame.filter(pl.col("phase") == phase).drop("phase")
        frames.append(frame.filter(pl.col("step").is_in(steps)))
    if not frames:
        return None, set()
    frame = pl.concat(frames, how="vertical_relaxed")
    want = pl.DataFrame({"step": list(counts), "__want": list(counts.values())},
                        schema={"step": frame.schema["step"], "__want": pl.Int64})
    frame = frame.join(want, on="step").filter(pl.col(rows).cast(pl.Int64) == pl.col("__want")).drop("__want")
    return frame, set(frame["step"].to_list())


__all__ = ["COMPACTED_DIR", "FORMAT_MINOR", "INDEX", "ROLLOUT_AGGREGATES", "SEGMENT_FORMAT", "TOKEN_AGGREGATES",
           "Coverage", "Segment", "list_segments", "parse_segment_name", "precomputed", "read_segment",
           "scan_part_rows", "segment_name"]
