"""The files of a run directory: step partitions, table files and what each file's footer says.

    for step, directory in step_dirs(run / "tokens", since=40):
        for path, (size, mtime_ns) in step_files(directory).items():
            part = read_part(path, "tokens")      # a Part, or None for a file that must be skipped

Both readers (:class:`opdwatch.reader.Run`, :class:`opdwatch.live.LiveRun`) list through here, so a file
one of them skips is skipped by the other the same way. Hidden temp files are never listed; a directory or
file that cannot be read, or a file with a column of the wrong type, is skipped with one
:class:`RunReadWarning` naming it. Listing uses ``os.scandir`` (never a glob: run paths may hold ``[``,
``*``, ``?``), and every table file is scanned through :func:`scan_files` for the same reason.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from opdwatch.format import parse_part

if TYPE_CHECKING:  # pyarrow is imported where a footer or an Arrow schema is read: see TABLE_SCHEMAS
    import pyarrow as pa
    import pyarrow.parquet as pq


class RunReadWarning(UserWarning):
    """A file of the run was skipped (unreadable or torn); the rest of the run is read."""


class StepTableWarning(RunReadWarning):
    """The step table was odd (a step recorded twice, out of order, an unknown truncation rate) and was read
    with the semantics of :mod:`opdwatch.step_table`; nothing is unreadable, so ``analyze`` does not refuse
    the run without ``--skip-corrupt`` as it does for a skipped file."""


@dataclass(frozen=True)
class Part:
    path: Path
    step: int
    rank: int
    phase: str            # "train" or "val" (chunk suffixes like "train-1" are folded in)
    columns: tuple[str, ...]
    num_rows: int
    # Rows of the whole file when this Part is one (step, rank, phase) slice of a compacted segment's file
    # (opdwatch.segments); None: the Part is the whole file. Scan Parts with segments.scan_part_rows.
    file_rows: int | None = None


@cache
def _polars_types() -> dict[pa.DataType, pl.DataType]:
    """Arrow types -> the polars dtypes they read as, for the types our tables use. polars' own conversion
    (pl.from_arrow) imports pandas, 0.3 s of every command's start-up; other types still go through it."""
    import pyarrow as pa

    return {
        pa.int64(): pl.Int64(), pa.int32(): pl.Int32(), pa.int16(): pl.Int16(), pa.int8(): pl.Int8(),
        pa.uint64(): pl.UInt64(), pa.uint32(): pl.UInt32(), pa.float64(): pl.Float64(), pa.float32(): pl.Float32(),
        pa.bool_(): pl.Boolean(), pa.string(): pl.String(), pa.large_string(): pl.String(),
        pa.string_view(): pl.String(), pa.null(): pl.Null(),
    }


def polars_schema(schema: pa.Schema) -> pl.Schema:
    """The polars dtypes an Arrow schema reads as."""
    import pyarrow as pa

    types = _polars_types()
    out = {}
    for f in schema:
        t = f.type.value_type if pa.types.is_dictionary(f.type) else f.type
        if t not in types or (t != f.type and pl.String() == types[t]):  # categoricals
            return pl.DataFrame(schema.empty_table()).schema
        out[f.name] = types[t]
    return pl.Schema(out)


class _TableSchemas(Mapping[str, pl.Schema]):
    """``{"rollouts": ..., "tokens": ...}``, derived from :mod:`opdwatch.format`'s Arrow schemas when first read:
    pyarrow (and the numpy it imports), ~0.25 s of a process's start, is loaded only by a command that scans a
    rollout or token file or reads a footer, not by `opdwatch info` on a compacted run."""

    def __init__(self) -> None:
        self._schemas: dict[str, pl.Schema] | None = None

    def _loaded(self) -> dict[str, pl.Schema]:
        if self._schemas is None:
            from opdwatch.format import ROLLOUT_SCHEMA, STEP_KEY_COLUMNS, TOKEN_SCHEMA

            assert set(STEP_KEYS) == set(STEP_KEY_COLUMNS)
            self._schemas = {"rollouts": polars_schema(ROLLOUT_SCHEMA), "tokens": polars_schema(TOKEN_SCHEMA)}
        return self._schemas

    def __getitem__(self, table: str) -> pl.Schema:
        return self._loaded()[table]

    def __iter__(self) -> Iterator[str]:
        return iter(self._loaded())

    def __len__(self) -> int:
        return len(self._loaded())

    def __repr__(self) -> str:
        return repr(self._loaded())


# The polars schemas the readers scan the rollout and token tables in; step metrics are open (see STEP_KEYS).
TABLE_SCHEMAS: Mapping[str, pl.Schema] = _TableSchemas()
# The key columns of the step-metrics table; every other column is a Float64 metric.
STEP_KEYS: dict[str, pl.DataType] = {"step": pl.Int64(), "phase": pl.String(), "rank": pl.Int32(),
                                   "time": pl.Float64()}


def skipped(message: str, *, stacklevel: int = 3, category: type[RunReadWarning] = RunReadWarning) -> None:
    """Warn that something of the run was skipped: one line naming it and why (the CLI prints it as
    ``opdwatch: warning: ...``)."""
    warnings.warn(message, category, stacklevel=stacklevel)


def why(exc: BaseException) -> str:
    return "permission denied" if isinstance(exc, PermissionError) else type(exc).__name__


# ----------------------------------------------------------------------------------------- listing
def entries(directory: Path) -> list[os.DirEntry[str]]:
    """The entries of ``directory`` sorted by name: none when it does not exist (not written yet, or
    dropped by a resume) or is a file (a stray), none with a warning when it cannot be read."""
    try:
        with os.scandir(directory) as it:
            return sorted(it, key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        skipped(f"{directory}: skipped unreadable directory ({why(exc)})")
        return []


def step_dirs(table_dir: Path, since: int | None = None) -> list[tuple[int, Path]]:
    """(step, directory) of a table's step partitions, oldest first; only those >= ``since``."""
    out = []
    for entry in entries(table_dir):
        if not entry.name.startswith("step="):
            continue
        try:
            step = int(entry.name[5:])
        except ValueError:
            continue  # a stray, not a partition
        if since is None or step >= since:
            out.append((step, Path(entry.path)))
    out.sort()
    return out


def step_files(step_dir: Path) -> dict[Path, tuple[int, int]]:
    """The table files of one step partition (every rank) with their (size, mtime_ns); hidden temp files
    are not listed, and a rank directory or file that cannot be read is skipped with a warning."""
    files: dict[Path, tuple[int, int]] = {}
    for rank_dir in entries(step_dir):
        if not rank_dir.name.startswith("rank="):
            continue
        for entry in entries(Path(rank_dir.path)):
            if not entry.name.endswith(".parquet") or entry.name.startswith((".", "_")):
                continue
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue  # removed since the listing (a resume dropping steps)
            except OSError as exc:
                skipped(f"{entry.path}: skipped unreadable Parquet file ({why(exc)})")
                continue
            files[Path(entry.path)] = (st.st_size, st.st_mtime_ns)
    return files


def part_order(part: Part) -> tuple[int, int, str, str]:
    """How both readers sort a table's files: by step, rank, phase, then name (chunks in write order)."""
    return part.step, part.rank, part.phase, part.path.name


# ----------------------------------------------------------------------------------------- footers
def read_part(path: Path, table: str) -> Part | None:
    """The :class:`Part` of a table file from its footer, or None for a file that must be skipped: not a
    table file (a temp file, a stray), unreadable (warned), or with a column of the wrong type (warned:
    polars would fail the whole scan, so one such file would hide the rest of the run)."""
    parsed = parse_part(path)
    if parsed is None:
        return None
    step, rank, name = parsed
    import pyarrow as pa  # here, not at the top: see TABLE_SCHEMAS
    import pyarrow.parquet as pq

    try:
        with pa.OSFile(os.fspath(path)) as fh:  # a local file, literally: pyarrow would expand a leading ~
            meta = pq.read_metadata(fh)
        columns, wrong = _footer_schema(table, meta)
    except FileNotFoundError:
        return None  # removed between listing and reading (a resume dropping steps)
    except Exception as exc:  # noqa: BLE001 - any unreadable file (or type polars cannot read) is skipped alike
        skipped(f"{path}: skipped unreadable Parquet file ({why(exc)})")
        return None
    if wrong:
        skipped(f"{path}: skipped Parquet file with wrong-typed column{'s' if len(wrong) > 1 else ''} "
                + ", ".join(wrong))
        return None
    return Part(path, step, rank, name.split("-")[0], columns, meta.num_rows)


# (table, serialized Arrow schema) -> (column names, wrong-typed columns): a run's thousands of files
# share a handful of schemas, and deriving the check costs more than reading the footer
_SCHEMA_CHECKS: dict[tuple[str, Any], tuple[tuple[str, ...], tuple[str, ...]]] = {}


def _footer_schema(table: str, meta: pq.FileMetaData) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The column names of a file and its wrong-typed columns (see :func:`_wrong_types`), cached by the
    Arrow schema pyarrow stores in the footer (other writers' files: by the schema derived from it)."""
    serialized = (meta.metadata or {}).get(b"ARROW:schema")
    key: tuple[str, Any] | None = None if serialized is None else (table, serialized)
    if key is not None and key in _SCHEMA_CHECKS:
        return _SCHEMA_CHECKS[key]
    schema = meta.schema.to_arrow_schema()
    key = key or (table, schema)
    if key not in _SCHEMA_CHECKS:
        if len(_SCHEMA_CHECKS) >= 1024:  # bounded: a long-lived dashboard sees many runs
            _SCHEMA_CHECKS.clear()
        _SCHEMA_CHECKS[key] = (tuple(schema.names), _wrong_types(table, schema))
    return _SCHEMA_CHECKS[key]


def _wrong_types(table: str, schema: pa.Schema) -> tuple[str, ...]:
    """``'column' (got, expected dtype)`` for each column whose stored type the reader's scan would refuse.

    Compared as polars dtypes (what the scan checks): large strings are strings, and an all-null column
    stored as the null type reads as nulls of any type.
    """
    got = polars_schema(schema)
    if table == "steps":
        expected = {c: STEP_KEYS.get(c, pl.Float64()) for c in got}  # every non-key column is a metric
    else:
        expected = {c: TABLE_SCHEMAS[table][c] for c in got if c in TABLE_SCHEMAS[table]}  # extras are ignored
    return tuple(f"{c!r} ({dtype}, expected {expected[c]})" for c, dtype in got.items()
                 if c in expected and dtype != expected[c] and dtype != pl.Null)


# ----------------------------------------------------------------------------------------- scanning
def _prefer_read_calls() -> None:
    """Have polars read local Parquet files with its async reader (read calls) instead of memory-mapping them.

    Why: on a 500M-row run (2,000 steps, 6.4 GB) whose files were not in the page cache, ``opdwatch analyze``
    took 156 s with mmap (page faults, ~41 MB/s from this machine's disk) against DuckDB's 54 s; with
    ``POLARS_FORCE_ASYNC=1`` it took 28 s, with the same output. From the page cache: 13.8 s against 12.8 s.
    (benchmarks/analyze_scale.py --cache cold, docs/scale.md, 2026-12-03). Set at the first scan, not at
    import, and only when the user has not set the variable: ``POLARS_FORCE_ASYNC=0`` restores mmap.
    """
    os.environ.setdefault("POLARS_FORCE_ASYNC", "1")


def scan_files(paths: Iterable[str | os.PathLike[str]], schema: pl.Schema | dict[str, Any], *,
               file_column: str | None = None) -> pl.LazyFrame:
    """A lazy scan of exactly these Parquet files in ``schema`` (missing columns null, extra ones
    dropped; ``file_column`` adds each row's file path). Every reader scans through here: ``glob=False``
    and absolute paths, because polars reads a path as a glob pattern (``run[12]`` would read ``run1``),
    expands a leading ``~`` and takes a relative ``file:...`` for a URL, and run directories may be named
    anything."""
    _prefer_read_calls()
    return pl.scan_parquet([os.path.abspath(p) for p in paths], schema=schema, glob=False,
                           hive_partitioning=False, missing_columns="insert", extra_columns="ignore",
                           include_file_paths=file_column)


__all__ = ["STEP_KEYS", "TABLE_SCHEMAS", "Part", "RunReadWarning", "StepTableWarning", "entries", "part_order",
           "polars_schema", "read_part", "scan_files", "skipped", "step_dirs", "step_files", "why"]
