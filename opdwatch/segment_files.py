"""The files of a compacted segment: its tables, its sidecars, its index (what :mod:`opdwatch.compaction` writes).

    spec = write_table(build / "tokens-train.parquet", "tokens", parts, 1_000_000, progress, add_tokens)

Rows are read exactly as the readers read them (:func:`opdwatch.segments.scan_part_rows` in the readers'
schemas) and written in the order the readers concatenated the files, one row group per ~1M rows that never
splits a step. The token sidecar is computed from those very rows, step by step, by the series' own query;
every file is fsynced before the segment is committed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from opdwatch.run_files import TABLE_SCHEMAS, Part
from opdwatch.segments import ROLLOUT_AGGREGATES, scan_part_rows


class SourceChanged(Exception):
    """A source file changed, or a row is not where its folder says: the build is dropped and ``step`` waits."""

    def __init__(self, step: int) -> None:
        super().__init__(step)
        self.step = step


def write_table(path: Path, table: str, parts: list[Part], row_group_rows: int,
                 progress: Callable[[int], None],
                 step_frames: Callable[[pl.DataFrame, list[tuple[int, int]]], None] | None = None) -> dict:
    """Concatenate these files' rows (read exactly as the readers read them) into one Parquet file, one row
    group per ~row_group_rows (never splitting a step); returns its index entry. ``step_frames(rows, steps)``
    is handed each batch of rows with its (step, rows) runs on the way (for the sidecar)."""
    schema = table_schema(table, parts)
    counts: dict[tuple[int, int], int] = {}
    written = 0
    tokens = table == "tokens"
    with pa.OSFile(os.fspath(path), "wb") as fh:  # not a Python file: pyarrow would write through the GIL
        writer: pq.ParquetWriter | None = None
        for batch in batches(parts, row_group_rows):
            frame = scan_part_rows(batch, schema).collect()
            check_homes(frame, batch)
            if step_frames is not None:
                step_frames(frame, step_runs(batch))
            arrow = frame.to_arrow()
            if writer is None:
                writer = pq.ParquetWriter(fh, arrow.schema, compression="zstd",
                                          use_dictionary=["step", "rank", "rollout"] if tokens else True,
                                          write_statistics=["step", "rank", "rollout", "position"] if tokens else True)
            writer.write_table(arrow, row_group_size=max(arrow.num_rows, 1))
            for p in batch:
                counts[(p.step, p.rank)] = counts.get((p.step, p.rank), 0) + p.num_rows
            written += arrow.num_rows
            progress(written)
        if writer is not None:
            writer.close()
    fsync(path)
    return {"name": path.name, "rows": written, "columns": list(schema),
            "parts": [[s, r, n] for (s, r), n in sorted(counts.items())]}


def table_schema(table: str, parts: list[Part]) -> dict[str, pl.DataType]:
    if table != "steps":
        return dict(TABLE_SCHEMAS[table])
    from opdwatch.step_table import row_schema

    return row_schema(parts)


def batches(parts: list[Part], rows: int) -> Iterator[list[Part]]:
    """Runs of consecutive parts of about ``rows`` rows, cut only between steps."""
    batch: list[Part] = []
    n = 0
    for part in parts:
        if batch and n + part.num_rows > rows and part.step != batch[-1].step:
            yield batch
            batch, n = [], 0
        batch.append(part)
        n += part.num_rows
    if batch:
        yield batch


def step_runs(batch: list[Part]) -> list[tuple[int, int]]:
    """(step, rows) of a batch's consecutive steps, in order."""
    runs: list[tuple[int, int]] = []
    for p in batch:
        if runs and runs[-1][0] == p.step:
            runs[-1] = (p.step, runs[-1][1] + p.num_rows)
        else:
            runs.append((p.step, p.num_rows))
    return runs


def check_homes(frame: pl.DataFrame, batch: list[Part]) -> None:
    """Every row's step and rank are its folder's (the rows come in the order of the files): the segment's
    index, and the slices readers take by the step and rank columns, could not say otherwise."""
    counts = [p.num_rows for p in batch]
    for column, want in (("step", [p.step for p in batch]), ("rank", [p.rank for p in batch])):
        got = frame[column].to_numpy()
        bad = np.flatnonzero(got != np.repeat(np.asarray(want, dtype=np.int64), counts))
        if bad.size:
            ends = np.cumsum(counts)
            raise SourceChanged(batch[int(np.searchsorted(ends, bad[0], side="right"))].step)


def token_sidecar() -> tuple[Callable[[pl.DataFrame, list[tuple[int, int]]], None], Callable[[], pl.DataFrame]]:
    """(add, result): the step series' token aggregates of each step's rows as they stream past, by the
    series' own per-step query (:func:`opdwatch.series.token_query`) on the same rows in the same order."""
    from opdwatch.series import TOKEN_SERIES, token_query  # the analysis layer, which imports the reader

    rows: list[pl.DataFrame] = []

    def add(frame: pl.DataFrame, steps: list[tuple[int, int]]) -> None:
        queries, offset = [], 0
        for step, n in steps:
            queries.append(token_query(frame.slice(offset, n).lazy())
                           .with_columns(pl.lit(step, dtype=pl.Int64).alias("step")))
            offset += n
        rows.append(pl.concat(queries).collect())

    def result() -> pl.DataFrame:
        schema = {"step": pl.Int64, **{c: pl.Float64 for c in TOKEN_SERIES}, "token_rows": pl.UInt32}
        if not rows:
            return pl.DataFrame(schema=schema)
        return pl.concat(rows).select(pl.col(c).cast(t) for c, t in schema.items())

    return add, result


def write_rollout_sidecar(directory: Path, rollouts: list[Part]) -> None:
    """The step series' rollout aggregates of these files (the series' own query), both phases."""
    from opdwatch.series import rollout_query  # the analysis layer, which imports the reader

    frames = [rollout_query(scan_part_rows([p for p in rollouts if p.phase == phase], TABLE_SCHEMAS["rollouts"]))
              .collect(engine="streaming").with_columns(pl.lit(phase).alias("phase"))
              for phase in sorted({p.phase for p in rollouts})]
    if frames:
        write_frame(directory / ROLLOUT_AGGREGATES, pl.concat(frames))


def write_frame(path: Path, frame: pl.DataFrame) -> None:
    with open(path, "wb") as fh:
        frame.write_parquet(fh)
        fh.flush()
        os.fsync(fh.fileno())


def write_index(path: Path, index: dict) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(index, fh)
        fh.flush()
        os.fsync(fh.fileno())


def fsync(path: Path) -> None:
    """Flush a file, or a directory (its entries: the renames into it), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


fsync_dir = fsync  # a directory is flushed the same way; the second name says which is meant at the call site


__all__ = ["SourceChanged", "batches", "check_homes", "fsync", "fsync_dir", "step_runs", "table_schema",
           "token_sidecar", "write_frame", "write_index", "write_rollout_sidecar", "write_table"]
