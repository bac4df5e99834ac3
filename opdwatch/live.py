"""Follow a run while it is being written, reading only what is new (the dashboard's data layer).

    live = LiveRun("runs/exp1")
    live.tick()              # lists only step partitions at or after the last one seen, tails the events
    live.series()            # opdwatch.series.step_series over the cached frames
    live.rollouts(40)        # one step's rollouts, for the drill-down
    live.rollout_tokens(40, rank=0, phase="train", rollout=3)   # one rollout's tokens

:class:`opdwatch.reader.Run` re-lists and re-reads every partition on ``refresh()``, and
``step_series`` re-aggregates the whole token table: seconds on a run of thousands of steps. A
``LiveRun`` keeps the file list (with each file's size and mtime), the step-metrics frame, the
``step_series`` and length frames and a byte offset per events file. :meth:`LiveRun.tick` lists each
table's step directories (one ``readdir``), looks inside only those from :data:`RESCAN_BACK` steps before
the newest it has seen (the recorder may still rewrite those: late ``log_metrics``, a validation row),
re-reads the manifest when it changed and the events files from their offsets, then recomputes the series
rows of the changed steps only (every ``step_series`` column is a function of one step's files) and
splices them in. The token table is read for new steps' aggregates and for one rollout at a time.

Path safety for anything that names a run from outside (a URL, a form field) lives here too:
:func:`resolve_run` accepts a path relative to a runs root and refuses anything that leaves it.
"""

from __future__ import annotations

import json
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from opdwatch.errors import OpdwatchError
from opdwatch.format import MANIFEST, TABLES

# The reader's schema-tolerant scan and table schemas, shared on purpose so that a drill-down frame
# is exactly what Run.rollouts()/Run.tokens() would give; its listing and footer checks too, so a file
# that Run skips (with a warning) is skipped here the same way.
from opdwatch.reader import (
    _PL_SCHEMAS,
    Part,
    RunReadWarning,
    _scan,
    _why,
    events_files,
    read_events,
    read_part,
    read_run_manifest,
    read_steps,
    step_dirs,
    step_files,
)
from opdwatch.web_paths import confine, inside, runs_root

# The recorder keeps merging late metrics into the two steps before its newest (Recorder._forget_before),
# so those step files can still be rewritten after we have read them.
RESCAN_BACK = 2
EVENT_SCHEMA = {"time": pl.Float64, "step": pl.Int64, "rank": pl.Int64, "kind": pl.String,
                "message": pl.String, "data": pl.String}
# Drill-down orders: the rollouts that matter for length inflation first.
ROLLOUT_ORDERS = {
    "length": [("num_tokens", True), ("seq_rep_n", True), ("advantage_mean", False)],
    "repetition": [("repetitive", True), ("repetitive_token_share", True), ("seq_rep_n", True),
                   ("num_tokens", True)],
    "advantage": [("advantage_mean", False), ("num_tokens", True)],
}


# ----------------------------------------------------------------------------------------- paths
def resolve_run(root: str | Path, name: str | None) -> Path:
    """The run directory ``name`` (a path relative to ``root``, as shown in URLs) after checking that it
    stays inside ``root``: no absolute paths, no ``..``, no symlink whose target leaves ``root``, and it
    must hold a manifest. Raises a one-line :class:`OpdwatchError` otherwise."""
    if not name or not isinstance(name, str):
        raise OpdwatchError("no run given")
    if "\x00" in name or "\\" in name:
        raise OpdwatchError(f"{name!r}: not a run name")
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts:
        raise OpdwatchError(f"{name!r}: runs are named relative to the runs root")
    base = Path(root).resolve(strict=True)
    try:
        target = (base / rel).resolve(strict=True)
    except (OSError, RuntimeError):  # missing, or a symlink loop
        raise OpdwatchError(f"{name!r}: no such run") from None
    # resolve() followed every symlink, so this also refuses links that point out of the root
    if not inside(target, base) or not target.is_dir():
        raise OpdwatchError(f"{name!r}: not a run under the runs root")
    manifest = target / MANIFEST
    if not manifest.is_file() or not inside(manifest, base):
        raise OpdwatchError(f"{name!r}: not an opdwatch run (no {MANIFEST})")
    return target


def list_runs(root: str | Path, *, max_depth: int = 3) -> list[str]:
    """Names (root-relative, '/'-separated) of the run directories under ``root``, at most ``max_depth``
    levels down. Symlinked directories are not followed, so listing never leaves the root."""
    base = Path(root).resolve(strict=True)
    found: list[str] = []

    def walk(directory: Path, depth: int) -> None:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            return
        names = {e.name for e in entries}
        if MANIFEST in names and directory != base:
            found.append(directory.relative_to(base).as_posix())
            return  # a run's own subdirectories (steps/, tokens/ ...) hold no runs
        if depth >= max_depth:
            return
        for e in entries:
            if not e.name.startswith((".", "_")) and e.is_dir(follow_symlinks=False):
                walk(Path(e.path), depth + 1)

    walk(base, 0)
    return found


def check_runs_root(root: str | Path) -> Path:
    """The resolved runs root, or a one-line OpdwatchError when it is missing or not a directory."""
    path = Path(root)
    if not path.exists():
        raise OpdwatchError(f"{root}: no such directory")
    if not path.is_dir():
        raise OpdwatchError(f"{root}: not a directory")
    return path.resolve()


# ------------------------------------------------------------------------------------- live run
@dataclass(frozen=True)
class TickResult:
    new_steps: int       # step numbers seen for the first time
    changed: bool        # anything the views show changed (steps, rewritten steps, events, manifest)
    reloaded: bool       # the run was reloaded from scratch (a resume rewrote its history)


class LiveRun:
    """A run directory followed incrementally. Thread-safe: the dashboard ticks it from callbacks.

    Every column of ``step_series`` is a function of one step's files, so a tick recomputes the series
    only for the steps whose files changed (a "view" of the run restricted to them) and splices those
    rows into the cached frame; the result equals ``step_series(open_run(path))``.
    """

    def __init__(self, path: str | Path, *, root: str | Path | None = None) -> None:
        self.path = Path(path)
        # root: files whose resolved path leaves it are skipped (see _confined); None reads what is there
        self.root = None if root is None else runs_root(root)
        self._refused: set[Path] = set()
        if self.root is not None:
            confine(self.path / MANIFEST, self.root)
        self._lock = threading.RLock()
        self._reset()
        self.tick()

    def _reset(self) -> None:
        self.manifest: dict[str, Any] = read_run_manifest(self.path)  # validates the run (one-line error)
        self._manifest_sig: tuple[int, int] | None = None
        # table -> step -> {file: Part}, and the (size, mtime) signature each Part was read at
        self._parts: dict[str, dict[int, dict[Path, Part]]] = {t: {} for t in TABLES}
        self._sigs: dict[Path, tuple[int, int]] = {}
        self._steps = read_steps([])
        self._series: pl.DataFrame | None = None
        self._lengths: pl.DataFrame | None = None
        self._events = pl.DataFrame(schema=EVENT_SCHEMA)
        self._event_pos: dict[Path, tuple[int, int]] = {}               # file -> (inode, byte offset)
        self._loaded = False
        self.version = 0

    # ----------------------------------------------------------------------------------- tick
    def tick(self) -> TickResult:
        """Read what was written since the last tick; returns what changed."""
        with self._lock:
            try:
                manifest_changed = self._read_manifest()
                new_steps, dirty = self._list_new_parts()
                events_changed, restart = self._read_new_events()
            except FileNotFoundError:
                restart = True  # files vanished between listing and reading: a resume is dropping steps
            if restart:
                version = self.version
                self._reset()
                self.tick()
                self.version = version + 1
                return TickResult(new_steps=len(self._steps_seen()), changed=True, reloaded=True)
            if dirty:
                self._update_frames(dirty)
            self._loaded = True
            changed = manifest_changed or bool(dirty) or events_changed
            if changed:
                self.version += 1
            return TickResult(new_steps=new_steps, changed=changed, reloaded=False)

    def _read_manifest(self) -> bool:
        try:
            st = (self.path / MANIFEST).stat()
        except PermissionError:  # the run directory's permissions changed while we follow it
            raise OpdwatchError(f"{self.path}: permission denied") from None
        sig = (st.st_size, st.st_mtime_ns)
        if sig == self._manifest_sig:
            return False
        self.manifest = read_run_manifest(self.path)
        self._manifest_sig = sig
        return True

    def _steps_seen(self) -> set[int]:
        return {s for by_step in self._parts.values() for s in by_step}

    def _list_new_parts(self) -> tuple[int, set[int]]:
        """List each table's step partitions from RESCAN_BACK steps before the newest seen; returns the
        number of new steps and the steps whose files changed (new, rewritten or removed)."""
        seen = self._steps_seen()
        since = max(seen) - RESCAN_BACK if seen else None
        dirty: set[int] = set()
        for table in TABLES:
            known = self._parts[table]
            listed = self._confined(dict(_step_dirs(self.path / table, since)))
            for step, directory in listed.items():
                files = self._confined(_step_dir_files(directory))
                old = known.get(step, {})
                # unchanged: no file gone, and every file (kept or skipped) at the version seen before
                if old.keys() <= files.keys() and all(self._sigs.get(f) == sig for f, sig in files.items()):
                    continue
                dirty.add(step)
                parts = {}
                for f, sig in files.items():
                    part = old.get(f) if self._sigs.get(f) == sig else read_part(f, table)
                    # a skipped file's version is remembered too: it is re-read (and re-warned) only
                    # when it changes, not on every tick
                    self._sigs[f] = sig
                    if part is not None:
                        parts[f] = part
                known[step] = parts
            for step in [s for s in known if since is not None and s >= since and s not in listed]:
                dirty.add(step)
                del known[step]
        return len(self._steps_seen() - seen), dirty

    def _update_frames(self, dirty: set[int]) -> None:
        """Re-read the step metrics of the dirty steps; recompute their series rows if already cached."""
        steps = sorted(dirty)
        view = _View(self, steps)
        kept = self._steps.filter(~pl.col("step").is_in(steps))
        self._steps = pl.concat([kept, view.steps().collect()], how="diagonal_relaxed").sort(["step", "phase"])
        if self._series is not None:
            self._series = _splice(self._series, _step_series(view), steps, order=_series_order)
        if self._lengths is not None:
            self._lengths = _splice(self._lengths, _length_distribution(view), steps)

    def _read_new_events(self) -> tuple[bool, bool]:
        """Append complete new lines of each events file; (changed, reload needed)."""
        rows: list[dict[str, Any]] = []
        paths = list(self._confined(dict.fromkeys(events_files(self.path))))
        for path in paths:
            try:  # a FileNotFoundError goes up to tick(): the file was replaced, reload
                st = path.stat()
                inode, offset = self._event_pos.get(path, (st.st_ino, 0))
                if inode != st.st_ino or st.st_size < offset:
                    return False, True  # replaced or cut (a Recorder resume rewrites it): history changed
                if st.st_size == offset:
                    continue
                with open(path, "rb") as fh:
                    fh.seek(offset)
                    chunk = fh.read(st.st_size - offset)
            except PermissionError as exc:  # skipped like Run.events() skips it; tried again next tick
                warnings.warn(f"{path}: skipped unreadable events file ({_why(exc)})", RunReadWarning,
                              stacklevel=2)
                continue
            end = chunk.rfind(b"\n") + 1  # a torn last line waits for the next tick
            for line in chunk[:end].decode("utf-8", errors="replace").splitlines():
                row = _event_row(line)
                if row is not None:
                    rows.append(row)
            self._event_pos[path] = (inode, offset + end)
        if not rows:
            return False, False
        if self._loaded and any(r["kind"] == "resume" for r in rows):
            return True, True  # steps after the resume point were dropped and are being redone
        fresh = pl.DataFrame(rows, schema=EVENT_SCHEMA, orient="row")
        self._events = pl.concat([self._events, fresh]).sort("time", maintain_order=True)
        return True, False

    def _confined(self, found: dict[Any, Any]) -> dict[Any, Any]:
        """``found`` (keys or values are the listed paths) without what resolves outside ``root``: a run
        inside the root whose ``rollouts/``, a step folder or a file links to another run must not serve
        that run's data. Each refused path is warned about once."""
        if self.root is None:
            return found
        kept = {}
        for key, value in found.items():
            path = key if isinstance(key, Path) else value
            if inside(path, self.root):
                kept[key] = value
            elif path not in self._refused:
                self._refused.add(path)
                warnings.warn(f"{path}: skipped, it resolves outside the runs root", RunReadWarning, stacklevel=2)
        return kept

    # ---------------------------------------------------------------------------------- views
    def steps(self, phase: str | None = None) -> pl.DataFrame:
        """The cached step-metrics frame (what ``Run.steps(phase).collect()`` returns)."""
        with self._lock:
            frame = self._steps
        return frame if phase is None else frame.filter(pl.col("phase") == phase)

    def events(self) -> pl.DataFrame:
        with self._lock:
            return self._events

    def series(self) -> pl.DataFrame:
        """``opdwatch.series.step_series`` of the run, kept up to date by :meth:`tick` (the first call
        computes it over the whole run: the cold load)."""
        with self._lock:
            if self._series is None:
                self._series = _step_series(_View(self, None))
            return self._series

    def lengths(self) -> pl.DataFrame:
        """``opdwatch.series.length_distribution`` (train rollouts' step and length), kept up to date."""
        with self._lock:
            if self._lengths is None:
                self._lengths = _length_distribution(_View(self, None))
            return self._lengths

    @property
    def last_step(self) -> int | None:
        train = self.steps("train")
        return int(train["step"].max()) if train.height else None

    @property
    def status(self) -> str:
        return str(self.manifest.get("status", "unknown"))

    @property
    def run_id(self) -> str:
        return str(self.manifest.get("run_id", self.path.name))

    # ----------------------------------------------------------------------------- drill-down
    def rollout_steps(self) -> list[int]:
        """Steps that have rollout files, as of the last tick."""
        with self._lock:
            return sorted(s for s, files in self._parts["rollouts"].items() if files)

    def table_parts(self, table: str, step: int | None = None, phase: str | None = None) -> list[Part]:
        """The files of ``table`` (one step or all) as of the last tick, sorted like ``Run.parts``."""
        with self._lock:
            by_step = self._parts[table]
            groups = [by_step.get(step, {})] if step is not None else list(by_step.values())
            parts = [p for g in groups for p in g.values() if phase is None or p.phase == phase]
        return sorted(parts, key=lambda p: (p.step, p.rank, p.phase, p.path.name))

    def rollouts(self, step: int, *, phase: str | None = None, order: str = "length",
                 with_text: bool = True) -> pl.DataFrame:
        """The rollouts of one step, ordered for the drill-down (see :data:`ROLLOUT_ORDERS`)."""
        frame = _scan_parts(self.table_parts("rollouts", step, phase), "rollouts")
        if not with_text:
            frame = frame.drop("text", "prompt_text")
        return order_rollouts(frame.collect(), order)

    def rollout_tokens(self, step: int, *, rank: int, phase: str, rollout: int) -> pl.DataFrame:
        """One rollout's token rows with each token's ``text`` (``opdwatch.drilldown.rollout_tokens`` on
        this step's files only). Raises OpdwatchError when its token rows were not recorded."""
        from opdwatch.drilldown import rollout_tokens

        with self._lock:
            view = _View(self, [step])
        return rollout_tokens(view, step=step, rollout=rollout, rank=rank, phase=phase)  # type: ignore[arg-type]

    def prompt_history(self, prompt_id: str, *, phase: str | None = None) -> pl.DataFrame:
        """Every recorded rollout of one prompt across steps (no texts), to compare them step by step.
        Scans the rollout table (not the token table); only called on a click."""
        frame = _scan_parts(self.table_parts("rollouts", None, phase), "rollouts").drop("text", "prompt_text")
        return frame.filter(pl.col("prompt_id") == prompt_id).collect().sort(["step", "phase", "sample_index"])


def order_rollouts(frame: pl.DataFrame, order: str = "length") -> pl.DataFrame:
    """Sort a rollout frame for the drill-down: ``length`` (longest first), ``repetition`` (most
    repetitive first) or ``advantage`` (lowest mean advantage first); nulls last."""
    if order not in ROLLOUT_ORDERS:
        raise OpdwatchError(f"unknown rollout order {order!r} (one of {sorted(ROLLOUT_ORDERS)})")
    keys = ROLLOUT_ORDERS[order]
    return frame.sort([k for k, _ in keys], descending=[d for _, d in keys], nulls_last=True,
                      maintain_order=True)


# ---------------------------------------------------------------------------------- internals
class _View:
    """The slice of :class:`opdwatch.reader.Run` that ``step_series`` and ``length_distribution`` read
    (``manifest``, ``steps()``, ``parts()``), served from a LiveRun's cached file list and restricted to
    some steps (None: all)."""

    def __init__(self, live: LiveRun, steps: list[int] | None) -> None:
        self.path = live.path
        self.manifest = live.manifest
        wanted = None if steps is None else set(steps)
        self._parts = {t: [p for s, files in by_step.items() if wanted is None or s in wanted
                           for p in files.values()] for t, by_step in live._parts.items()}
        for parts in self._parts.values():
            parts.sort(key=lambda p: (p.step, p.rank, p.phase, p.path.name))
        self._live_steps = live._steps if steps is None else None

    def parts(self, table: str, *, min_step: int | None = None) -> list[Part]:
        parts = self._parts[table]
        return parts if min_step is None else [p for p in parts if p.step >= min_step]

    def steps(self, phase: str | None = None) -> pl.LazyFrame:
        frame = self._live_steps if self._live_steps is not None else read_steps(self._parts["steps"])
        return (frame if phase is None else frame.filter(pl.col("phase") == phase)).lazy()

    def events(self) -> pl.DataFrame:
        return read_events(self.path)


def _step_series(view: _View) -> pl.DataFrame:
    from opdwatch.series import step_series  # the analysis layer, loaded when a view first needs it

    return step_series(view)  # type: ignore[arg-type]  # duck-typed Run


def _length_distribution(view: _View) -> pl.DataFrame:
    from opdwatch.series import length_distribution

    return length_distribution(view)  # type: ignore[arg-type]


def _series_order(columns: list[str]) -> list[str]:
    """step_series' column order: its fixed leading columns, then the rest sorted."""
    from opdwatch.series import ROLLOUT_SERIES, TOKEN_SERIES, TOKEN_SOURCE

    first = ["step", *ROLLOUT_SERIES, *TOKEN_SERIES, TOKEN_SOURCE]
    return [c for c in first if c in columns] + sorted(c for c in columns if c not in first)


def _splice(cached: pl.DataFrame, fresh: pl.DataFrame, steps: list[int], *,
            order: Any = None) -> pl.DataFrame:
    """``cached`` with the rows of ``steps`` replaced by ``fresh`` (which holds only those steps)."""
    frame = pl.concat([cached.filter(~pl.col("step").is_in(steps)), fresh], how="diagonal_relaxed")
    frame = frame.sort("step", maintain_order=True)
    return frame.select(order(frame.columns)) if order is not None else frame


def _step_dirs(table_dir: Path, since: int | None) -> list[tuple[int, Path]]:
    """(step, directory) of a table's step partitions, oldest first; only those >= ``since``."""
    return step_dirs(table_dir, since)  # an unreadable directory is skipped with a RunReadWarning


def _step_dir_files(directory: Path) -> dict[Path, tuple[int, int]]:
    return step_files(directory)  # (size, mtime_ns) per file; unreadable rank dirs/files are warned about


def _scan_parts(parts: list[Part], table: str) -> pl.LazyFrame:
    return _scan(parts, _PL_SCHEMAS[table])


def _event_row(line: str) -> dict[str, Any] | None:
    """One events-file line as a row of the reader's events frame (same fields as ``read_events``)."""
    if not line.strip():
        return None
    try:
        rec = json.loads(line)
    except json.JSONDecodeError:
        return None
    return {"time": float(rec.get("time", 0.0)), "step": rec.get("step"), "rank": rec.get("rank", 0),
            "kind": str(rec.get("kind", "")), "message": str(rec.get("message", "")),
            "data": json.dumps(rec.get("data", {}))}


__all__ = ["LiveRun", "TickResult", "check_runs_root", "list_runs", "order_rollouts", "resolve_run"]
