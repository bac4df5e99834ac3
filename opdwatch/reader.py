"""Open a run directory, finished or still being written, as polars frames.

    run = open_run("runs/exp1")
    run.steps("train").collect()       # one row per step: the paper's Figs 2-4 series
    run.rollouts().filter(pl.col("repetitive")).collect()
    run.tokens().filter(pl.col("step") == 40).collect()
    run.events()                         # DataFrame of the events log

The file list is taken once per :meth:`Run.refresh`; hidden temp files are never listed, and a file
that is not a readable Parquet file (a crash on a non-atomic copy, a disk error) is skipped with a
warning instead of failing the whole read.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
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
        self.manifest: dict[str, Any] = read_manifest(self.path)
        self._parts: dict[str, list[Part]] = {}
        self._meta_cache: dict[tuple[str, int, int], Part | None] = {}
        self.refresh()

    # ------------------------------------------------------------------------------- listing
    def refresh(self) -> Run:
        """Re-read the manifest and the file list (cheap: footers of files already seen are cached)."""
        self.manifest = read_manifest(self.path)
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
        root = self.path / table
        if not root.is_dir():
            return []
        out = []
        for path in root.glob("step=*/rank=*/*.parquet"):
            parsed = parse_part(path)
            if parsed is None:
                continue
            part = self._inspect(path, *parsed)
            if part is not None:
                out.append(part)
        out.sort(key=lambda p: (p.step, p.rank, p.phase, p.path.name))
        return out

    def _inspect(self, path: Path, step: int, rank: int, name: str) -> Part | None:
        try:
            st = path.stat()
        except OSError:
            return None  # removed between listing and stat (a resume dropping steps)
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key not in self._meta_cache:
            try:
                meta = pq.read_metadata(path)
                part: Part | None = Part(path, step, rank, name.split("-")[0], tuple(meta.schema.names),
                                         meta.num_rows)
            except Exception as exc:  # noqa: BLE001 - any unreadable file is skipped the same way
                warnings.warn(f"{path}: skipped unreadable Parquet file ({type(exc).__name__})",
                              RunReadWarning, stacklevel=3)
                part = None
            self._meta_cache[key] = part
        return self._meta_cache[key]

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


def read_steps(parts: list[Part]) -> pl.DataFrame:
    """Concatenate step-metric files whose metric columns differ (a metric added mid-run is null before)."""
    if not parts:
        return pl.DataFrame(schema={k: v for k, v in _STEP_KEYS.items()})
    columns: dict[str, None] = {}
    for p in parts:
        columns.update(dict.fromkeys(p.columns))
    schema = dict(_STEP_KEYS) | {c: pl.Float64 for c in columns if c not in _STEP_KEYS}
    frame = pl.scan_parquet([p.path for p in parts], schema=schema, missing_columns="insert",
                            extra_columns="ignore", hive_partitioning=False).collect()
    return frame.sort(["step", "phase"])


_STEP_KEYS = {"step": pl.Int64, "phase": pl.String, "rank": pl.Int32, "time": pl.Float64}
assert set(_STEP_KEYS) == set(STEP_KEY_COLUMNS)


def _scan(parts: list[Part], schema: pl.Schema) -> pl.LazyFrame:
    if not parts:
        return pl.LazyFrame(schema=schema)
    return pl.scan_parquet([p.path for p in parts], schema=schema, hive_partitioning=False,
                           missing_columns="insert", extra_columns="ignore")


def read_events(run_dir: Path) -> pl.DataFrame:
    """All ranks' events, time-ordered. A torn last line (a crash mid-append) is skipped with a warning."""
    rows: list[dict[str, Any]] = []
    for path in sorted((Path(run_dir) / EVENTS_DIR).glob("rank=*.jsonl")):
        for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
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
