"""Undoing compaction before a resume: the segments holding steps that are about to be recorded again go.

    uncompact_after(run_dir, step)     # rank 0, in Recorder.create(..., resume_from_step=step)

A segment reaching past ``step`` first has its rows of steps <= ``step`` written back as ordinary step partitions
(invisible while it stands: it supersedes them), then it is retired by a rename and deleted. Killed midway, the
segment still stands, and the resume, run again, does it again. Rank 0 does it for every rank: every rank
resumes from the same step.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import polars as pl

from opdwatch.compaction import locked
from opdwatch.format import TABLES, part_path
from opdwatch.run_files import TABLE_SCHEMAS, Part
from opdwatch.segment_files import batches
from opdwatch.segments import COMPACTED_DIR, list_segments, scan_part_rows


def uncompact_after(run_dir: str | os.PathLike[str], step: int) -> int:
    """Before a resume from ``step``: every segment holding steps after it goes. Its rows of steps <= ``step``
    are first written back as ordinary step partitions (invisible while the segment stands), then the segment
    is retired by a rename; returns how many segments went. Killed midway, the segment still stands and the
    resume does it again."""
    from opdwatch.atomic import write_parquet  # the recorder's writer, for the same file options

    run = Path(run_dir)
    if not (run / COMPACTED_DIR).is_dir():
        return 0
    retired = 0
    with locked(run, True):
        for seg in list_segments(run):
            if seg.last_step <= step:
                continue
            for table in TABLES:
                schema = {c: TABLE_SCHEMAS[table][c] for c in TABLE_SCHEMAS[table]} if table != "steps" else None
                kept = [p for p in seg.parts(table) if p.step <= step]
                by_phase = [[p for p in kept if p.phase == ph] for ph in sorted({p.phase for p in kept})]
                for batch in (b for chosen in by_phase for b in batches(chosen, 1_000_000)):
                    frame = scan_part_rows(batch, schema or _segment_schema(batch)).collect()
                    for (s, r, phase), rows in _split(frame, batch).items():
                        opts = {"dictionary_columns": ["step", "rank", "rollout"],
                                "stats_columns": ["step", "rank", "rollout", "position"]} if table == "tokens" else {}
                        write_parquet(rows.to_arrow(), part_path(run, table, s, r, phase), **opts)
            gone = seg.path.with_name(f".{seg.path.name}.retired.tmp-{os.getpid()}")
            os.rename(seg.path, gone)
            shutil.rmtree(gone, ignore_errors=True)
            retired += 1
    return retired


def _segment_schema(parts: list[Part]) -> dict[str, pl.DataType]:
    from opdwatch.step_table import row_schema

    return row_schema(parts)


def _split(frame: pl.DataFrame, batch: list[Part]) -> dict[tuple[int, int, str], pl.DataFrame]:
    """The rows of each (step, rank) slice of one segment file (one phase), keyed with the phase."""
    phase = batch[0].phase
    out = {}
    for (s, r), rows in frame.partition_by(["step", "rank"], as_dict=True, maintain_order=True).items():
        out[(int(s), int(r), phase)] = rows
    return out


__all__ = ["uncompact_after"]
