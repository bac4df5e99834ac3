"""Open a run directory, finished or still being written, as polars frames.

    run = open_run("runs/exp1")
    run.steps("train").collect()       # one row per step: the paper's Figs 2-4 series
    run.rollouts().filter(pl.col("repetitive")).collect()
    run.tokens().filter(pl.col("step") == 40).collect()
    run.events()                         # DataFrame of the events log

The file list is taken once per :meth:`Run.refresh`; hidden temp files are never listed, and a file
or directory that cannot be used (not a readable Parquet file after a crash on a non-atomic copy or a
disk error, a column of the wrong type, no read permission) is skipped with a :class:`RunReadWarning`
naming it instead of failing the whole read. Readers never write or delete anything in the run.

Run paths are plain paths, never patterns: a run may live at ``exp[seed]`` or ``runs/lr=1e-4*``, so
files are listed with ``os.scandir`` and scanned with :func:`scan_files` (``glob=False``, absolute paths:
polars would otherwise expand ``[...]``, ``*``, ``?``, a leading ``~`` and read ``file:`` as a URL).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from opdwatch.errors import OpdwatchError
from opdwatch.format import EVENTS_DIR, ROLLOUT_SCHEMA, STEP_KEY_COLUMNS, TABLES, TOKEN_SCHEMA, parse_part
from opdwatch.manifest import read_manifest


class RunReadWarning(UserWarning):
    """A file of the run was skipped (unreadable or torn); the rest of the run is read."""


@dataclass(frozen=True)
class Part:
    path: Path
    step: int
    rank: int
    phase: str            # "train" or "val" (chunk suffixes like "train-1" are folded in)
    columns: tuple[str, ...]
    num_rows: int


_PL_SCHEMAS = {
    "rollouts": pl.Schema(pl.from_arrow(ROLLOUT_SCHEMA.empty_table()).schema),
    "tokens": pl.Schema(pl.from_arrow(TOKEN_SCHEMA.empty_table()).schema),
}


class Run:
    """A read-only view of one run directory. Call :meth:`refresh` to see what was written since."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.manifest: dict[str, Any] = read_run_manifest(self.path)
        self._parts: dict[str, list[Part]] = {}
        self._meta_cache: dict[tuple[str, int, int], Part | None] = {}
        self.refresh()

    # ------------------------------------------------------------------------------- listing
    def refresh(self) -> Run:
        """Re-read the manifest and the file list (cheap: footers of files already seen are cached)."""
        self.manifest = read_run_manifest(self.path)
        for table in TABLES:
            self._parts[table] = self._list(table)
        return self

    def parts(self, table: str, *, min_step: int | None = None) -> list[Part]:
        """The readable files of ``table``, sorted by (step, rank, phase); ``min_step`` keeps newer ones."""
        if table not in TABLES:
            raise OpdwatchError(f"unknown table {table!r} (one of {TABLES})")
        parts = self._parts[table]
        return parts if min_step is None else [p for p in parts if p.step >= min_step]

    def _list(self, table: str) -> list[Part]:
        out = []
        for _, directory in step_dirs(self.path / table):
            for path, (size, mtime) in step_files(directory).items():
                key = (str(path), size, mtime)
                if key not in self._meta_cache:  # a file version's footer is read (and warned about) once
                    self._meta_cache[key] = read_part(path, table)
                part = self._meta_cache[key]
                if part is not None:
                    out.append(part)
        out.sort(key=lambda p: (p.step, p.rank, p.phase, p.path.name))
        return out

    # ------------------------------------------------------------------------------- tables
    def steps(self, phase: str | None = None) -> pl.LazyFrame:
        """Step metrics, one row per (step, phase); metric columns are Float64, missing ones null."""
        parts = [p for p in self.parts("steps") if phase is None or p.phase == phase]
        return read_steps(parts).lazy()

    def rollouts(self, *, min_step: int | None = None) -> pl.LazyFrame:
        return _scan(self.parts("rollouts", min_step=min_step), _PL_SCHEMAS["rollouts"])

    def tokens(self, *, min_step: int | None = None) -> pl.LazyFrame:
        return _scan(self.parts("tokens", min_step=min_step), _PL_SCHEMAS["tokens"])

    def events(self) -> pl.DataFrame:
        return read_events(self.path)

    # ------------------------------------------------------------------------------- facts
    @property
    def status(self) -> str:
        return str(self.manifest.get("status", "unknown"))

    @property
    def run_id(self) -> str:
        return str(self.manifest.get("run_id", self.path.name))

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


# ----------------------------------------------------------------------------------------- listing
def step_dirs(table_dir: Path, since: int | None = None) -> list[tuple[int, Path]]:
    """(step, directory) of a table's step partitions, oldest first; only those >= ``since``."""
    out = []
    for entry in _entries(table_dir):
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
    for rank_dir in _entries(step_dir):
        if not rank_dir.name.startswith("rank="):
            continue
        for entry in _entries(Path(rank_dir.path)):
            if not entry.name.endswith(".parquet") or entry.name.startswith((".", "_")):
                continue
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue  # removed since the listing (a resume dropping steps)
            except OSError as exc:
                _skipped(f"{entry.path}: skipped unreadable Parquet file ({_why(exc)})")
                continue
            files[Path(entry.path)] = (st.st_size, st.st_mtime_ns)
    return files


def _entries(directory: Path) -> list[os.DirEntry[str]]:
    """The entries of ``directory`` sorted by name: none when it does not exist (not written yet, or
    dropped by a resume) or is a file (a stray), none with a warning when it cannot be read."""
    try:
        with os.scandir(directory) as it:
            return sorted(it, key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        _skipped(f"{directory}: skipped unreadable directory ({_why(exc)})")
        return []


def read_part(path: Path, table: str) -> Part | None:
    """The :class:`Part` of a table file from its footer, or None for a file that must be skipped: not a
    table file (a temp file, a stray), unreadable (warned), or with a column of the wrong type (warned:
    polars would fail the whole scan, so one such file would hide the rest of the run)."""
    parsed = parse_part(path)
    if parsed is None:
        return None
    step, rank, name = parsed
    try:
        with pa.OSFile(os.fspath(path)) as fh:  # a local file, literally: pyarrow would expand a leading ~
            meta = pq.read_metadata(fh)
        columns, wrong = _footer_schema(table, meta)
    except FileNotFoundError:
        return None  # removed between listing and reading (a resume dropping steps)
    except Exception as exc:  # noqa: BLE001 - any unreadable file (or type polars cannot read) is skipped alike
        _skipped(f"{path}: skipped unreadable Parquet file ({_why(exc)})")
        return None
    if wrong:
        _skipped(f"{path}: skipped Parquet file with wrong-typed column{'s' if len(wrong) > 1 else ''} "
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
    got = pl.Schema(pl.from_arrow(schema.empty_table()).schema)  # type: ignore[union-attr]
    if table == "steps":
        expected = {c: _STEP_KEYS.get(c, pl.Float64) for c in got}  # every non-key column is a metric
    else:
        expected = {c: _PL_SCHEMAS[table][c] for c in got if c in _PL_SCHEMAS[table]}  # extras are ignored
    return tuple(f"{c!r} ({dtype}, expected {expected[c]})" for c, dtype in got.items()
                 if c in expected and dtype != expected[c] and dtype != pl.Null)


def _why(exc: BaseException) -> str:
    return "permission denied" if isinstance(exc, PermissionError) else type(exc).__name__


def _skipped(message: str) -> None:
    # One line naming the file and why; the CLI prints it as "opdwatch: warning: ...".
    warnings.warn(message, RunReadWarning, stacklevel=3)


def read_steps(parts: list[Part]) -> pl.DataFrame:
    """Concatenate step-metric files whose metric columns differ (a metric added mid-run is null before)."""
    if not parts:
        return pl.DataFrame(schema={k: v for k, v in _STEP_KEYS.items()})
    columns: dict[str, None] = {}
    for p in parts:
        columns.update(dict.fromkeys(p.columns))
    schema = dict(_STEP_KEYS) | {c: pl.Float64 for c in columns if c not in _STEP_KEYS}
    return scan_files([p.path for p in parts], schema).collect().sort(["step", "phase"])


_STEP_KEYS = {"step": pl.Int64, "phase": pl.String, "rank": pl.Int32, "time": pl.Float64}
assert set(_STEP_KEYS) == set(STEP_KEY_COLUMNS)


def _scan(parts: list[Part], schema: pl.Schema) -> pl.LazyFrame:
    if not parts:
        return pl.LazyFrame(schema=schema)
    return scan_files([p.path for p in parts], schema)


def scan_files(paths: Iterable[str | os.PathLike[str]], schema: pl.Schema | dict[str, Any]) -> pl.LazyFrame:
    """A lazy scan of exactly these Parquet files in ``schema`` (missing columns null, extra ones
    dropped). Every reader scans through here: ``glob=False`` and absolute paths, because polars reads a
    path as a glob pattern (``run[12]`` would read ``run1``), expands a leading ``~`` and takes a relative
    ``file:...`` for a URL, and run directories may be named anything."""
    return pl.scan_parquet([os.path.abspath(p) for p in paths], schema=schema, glob=False,
                           hive_partitioning=False, missing_columns="insert", extra_columns="ignore")


def events_files(run_dir: Path) -> list[Path]:
    """The run's events files (one per rank), sorted; an unreadable events directory is warned about."""
    return [Path(e.path) for e in _entries(Path(run_dir) / EVENTS_DIR)
            if e.name.startswith("rank=") and e.name.endswith(".jsonl")]


def read_events(run_dir: Path) -> pl.DataFrame:
    """All ranks' events, time-ordered. A torn last line (a crash mid-append) or an unreadable events file
    is skipped with a warning."""
    rows: list[dict[str, Any]] = []
    for path in events_files(run_dir):
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            continue
        except OSError as exc:
            warnings.warn(f"{path}: skipped unreadable events file ({_why(exc)})", RunReadWarning, stacklevel=2)
            continue
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                warnings.warn(f"{path}:{lineno}: skipped a torn event line", RunReadWarning, stacklevel=2)
                continue
            rows.append({"time": float(rec.get("time", 0.0)), "step": rec.get("step"), "rank": rec.get("rank", 0),
                         "kind": str(rec.get("kind", "")), "message": str(rec.get("message", "")),
                         "data": json.dumps(rec.get("data", {}))})
    schema = {"time": pl.Float64, "step": pl.Int64, "rank": pl.Int64, "kind": pl.String, "message": pl.String,
              "data": pl.String}
    return pl.DataFrame(rows, schema=schema, orient="row").sort("time") if rows else pl.DataFrame(schema=schema)
