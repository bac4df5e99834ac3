"""LiveRun: a run followed while it is being written, reading only what is new (the dashboard's data layer).

    live = LiveRun("runs/exp1")
    live.tick()              # lists only recent step partitions, tails the events
    live.series()            # opdwatch.series.step_series over the cached frames
    live.step_rollouts(40)   # one step's rollouts, for the drill-down
    live.rollout_tokens(40, rank=0, phase="train", rollout=3)   # one rollout's tokens

:class:`opdwatch.reader.Run` re-lists and re-reads every partition on ``refresh()``, and ``step_series``
re-aggregates the whole token table: seconds on a run of thousands of steps. A ``LiveRun`` keeps the file
list (:class:`~opdwatch.live.incremental.PartIndex`), the step-metrics frame, the ``step_series`` and
length frames and a byte offset per events file (:class:`~opdwatch.live.tail.EventTail`). A tick re-reads
the manifest when it changed, lists what can have changed, tails the events, then recomputes the series
rows of the changed steps only and splices them in (:mod:`opdwatch.live.splice`). The token table is read
for new steps' aggregates and for one rollout at a time. The step-metrics frame is resolved by
:mod:`opdwatch.step_table` from every raw row kept by folder, exactly as :class:`~opdwatch.reader.Run` does
(one row per step, unknown truncation from the rollouts), and what is odd about it is warned once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import polars as pl

from opdwatch.errors import OpdwatchError
from opdwatch.event_log import EVENT_SCHEMA
from opdwatch.format import MANIFEST, TABLES
from opdwatch.live.incremental import PartIndex
from opdwatch.live.splice import RunView, series_order, splice
from opdwatch.live.tail import EventTail
from opdwatch.reader import read_run_manifest, scan_parts
from opdwatch.run_files import Part
from opdwatch.run_source import RunFacts
from opdwatch.step_table import HOME, StepFacts, StepTable, StepWarnings, read_rows, resolve
from opdwatch.web_paths import Confinement, confine

T = TypeVar("T")

# Drill-down orders: the rollouts that matter for length inflation first.
ROLLOUT_ORDERS = {
    "length": [("num_tokens", True), ("seq_rep_n", True), ("advantage_mean", False)],
    "repetition": [("repetitive", True), ("repetitive_token_share", True), ("seq_rep_n", True),
                   ("num_tokens", True)],
    "advantage": [("advantage_mean", False), ("num_tokens", True)],
}


@dataclass(frozen=True)
class TickResult:
    new_steps: int       # step numbers seen for the first time
    changed: bool        # anything the views show changed (steps, rewritten steps, events, manifest)
    reloaded: bool       # the run was reloaded from scratch (a resume rewrote its history)


class LiveRun(RunFacts):
    """A run directory followed incrementally. Thread-safe: the dashboard ticks it from callbacks.

    Every column of ``step_series`` is a function of one step's files, so a tick recomputes the series
    only for the steps whose files changed (a :class:`RunView` restricted to them) and splices those rows
    into the cached frame; the result equals ``step_series(open_run(path))``. ``root``: files whose
    resolved path leaves it are skipped (:class:`opdwatch.web_paths.Confinement`); None reads what is there.
    """

    def __init__(self, path: str | Path, *, root: str | Path | None = None) -> None:
        self.path = Path(path)
        self._confinement = None if root is None else Confinement(root)
        self.root = None if self._confinement is None else self._confinement.root
        if self.root is not None:
            confine(self.path / MANIFEST, self.root)
        self._lock = threading.RLock()
        self._step_warnings = StepWarnings()  # kept across reloads: a resume does not repeat the warning
        self._reset()
        self.tick()

    def _reset(self) -> None:
        self.manifest: dict[str, Any] = read_run_manifest(self.path)  # validates the run (one-line error)
        self._manifest_sig: tuple[int, int] | None = None
        allows = None if self._confinement is None else self._confinement.allows
        self._index = PartIndex(self.path, allows)
        self._tail = EventTail(self.path, allows)
        self._rows = read_rows([])  # every step-metric row, with its file and folder (replaced by folder)
        self._table = resolve(self._rows, root=self.path)
        self._steps = self._table.frame
        self._series: pl.DataFrame | None = None
        self._lengths: pl.DataFrame | None = None
        self._events = pl.DataFrame(schema=EVENT_SCHEMA)
        self._loaded = False
        self.version = 0

    # ----------------------------------------------------------------------------------- tick
    def tick(self) -> TickResult:
        """Read what was written since the last tick; returns what changed."""
        with self._lock:
            try:
                manifest_changed = self._read_manifest()
                new_steps, dirty = self._index.update()
                events_changed, restart = self._read_new_events()
                if dirty and not restart:
                    self._update_frames(dirty)
            except FileNotFoundError:
                # files vanished between listing and reading: a resume is dropping steps, or a compaction
                # replaced them (its segment is listed on the reload)
                restart = True
            if restart:
                version = self.version
                self._reset()
                self.tick()
                self.version = version + 1
                return TickResult(new_steps=len(self._index.steps_seen()), changed=True, reloaded=True)
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

    def _update_frames(self, dirty: set[int]) -> None:
        """Re-read the step metrics of the dirty steps; recompute their series rows if already cached."""
        from opdwatch.series import length_distribution, step_series  # the analysis layer, loaded when needed

        steps = sorted(dirty)
        # Raw rows are replaced by folder (a row in another step's folder moves with its file) and the whole
        # table is resolved again: which row of a step is read can depend on other folders' files.
        kept = self._rows.filter(~pl.col(HOME).is_in(steps))
        fresh = read_rows(self._index.parts("steps", steps=steps))
        self._rows = pl.concat([kept, fresh], how="diagonal_relaxed")
        before = self._table
        self._table = resolve(self._rows, root=self.path, rollouts=self._train_rollouts)
        self._steps = self._table.frame
        self._step_warnings.warn(self.path, self._table)
        view = self.source(steps)
        if self._series is not None:
            if before.misplaced or self._table.misplaced:
                # a row sits in another step's folder: the steps whose rows changed are not the dirty folders
                self._series = step_series(self.source())
            else:
                self._series = splice(self._series, step_series(view), steps, order=series_order)
        if self._lengths is not None:
            self._lengths = splice(self._lengths, length_distribution(view), steps)

    def _train_rollouts(self, steps: Collection[int]) -> list[Part]:
        return self._index.parts("rollouts", steps=sorted(steps), phase="train")

    def _read_new_events(self) -> tuple[bool, bool]:
        """Append the new events; (changed, reload needed)."""
        rows = self._tail.read_new()
        if rows is None:
            return False, True
        if not rows:
            return False, False
        if self._loaded and any(r["kind"] == "resume" for r in rows):
            return True, True  # steps after the resume point were dropped and are being redone
        fresh = pl.DataFrame(rows, schema=EVENT_SCHEMA, orient="row")
        self._events = pl.concat([self._events, fresh]).sort("time", maintain_order=True)
        return True, False

    # ---------------------------------------------------------------------------------- views
    def source(self, steps: list[int] | None = None) -> RunView:
        """The run as of the last tick as a :class:`~opdwatch.run_source.RunSource` (for the analysis
        functions), restricted to ``steps`` (None: all)."""
        with self._lock:
            parts = {t: self._index.parts(t, steps=steps) for t in TABLES}
            # the resolved table's rows (a restricted view must not resolve its folders' rows on its own)
            frame = self._steps if steps is None else self._steps.filter(pl.col("step").is_in(steps))
            return RunView(self.path, self.manifest, parts, steps=frame)

    def parts(self, table: str, *, min_step: int | None = None) -> list[Part]:
        """The files of ``table`` as of the last tick, sorted like ``Run.parts``."""
        if table not in TABLES:
            raise OpdwatchError(f"unknown table {table!r} (one of {TABLES})")
        with self._lock:
            parts = self._index.parts(table)
        return parts if min_step is None else [p for p in parts if p.step >= min_step]

    def steps(self, phase: str | None = None) -> pl.LazyFrame:
        """The step metrics as of the last tick (:class:`~opdwatch.run_source.RunSource`): a lazy view of the
        cached frame, so ``.collect()`` costs no file read and equals ``Run.steps(phase).collect()``."""
        with self._lock:
            frame = self._steps
        return (frame if phase is None else frame.filter(pl.col("phase") == phase)).lazy()

    def rollouts(self, *, min_step: int | None = None) -> pl.LazyFrame:
        """The rollout rows of the files seen at the last tick (the :class:`RunSource` scan)."""
        return scan_parts(self.parts("rollouts", min_step=min_step), "rollouts")

    def tokens(self, *, min_step: int | None = None) -> pl.LazyFrame:
        """The token rows of the files seen at the last tick (the :class:`RunSource` scan)."""
        return scan_parts(self.parts("tokens", min_step=min_step), "tokens")

    def events(self) -> pl.DataFrame:
        with self._lock:
            return self._events

    def series(self) -> pl.DataFrame:
        """``opdwatch.series.step_series`` of the run, kept up to date by :meth:`tick` (the first call
        computes it over the whole run: the cold load)."""
        from opdwatch.series import step_series

        with self._lock:
            if self._series is None:
                self._series = self._current(lambda: step_series(self.source()))
            return self._series

    def lengths(self) -> pl.DataFrame:
        """``opdwatch.series.length_distribution`` (train rollouts' step and length), kept up to date."""
        from opdwatch.series import length_distribution

        with self._lock:
            if self._lengths is None:
                self._lengths = self._current(lambda: length_distribution(self.source()))
            return self._lengths

    def step_table(self) -> StepTable:
        """The resolved step table as of the last tick."""
        with self._lock:
            return self._table

    def step_facts(self) -> StepFacts:
        """Train steps, first/last step, gaps, unknown truncation and the collapse step (as ``Run.step_facts``)."""
        return self.step_table().facts

    def step_note(self) -> str | None:
        """What is odd about the step table, the text of the CLI's warning without the run path (the
        dashboard shows it), or None."""
        return self.step_table().describe()

    @property
    def last_step(self) -> int | None:
        train = self.steps("train").collect()  # sorted by step: the last row is the newest
        return int(train["step"][-1]) if train.height else None

    # ----------------------------------------------------------------------------- drill-down
    def rollout_steps(self) -> list[int]:
        """Steps that have rollout files, as of the last tick."""
        with self._lock:
            return self._index.steps_with_files("rollouts")

    def table_parts(self, table: str, step: int | None = None, phase: str | None = None) -> list[Part]:
        """The files of ``table`` (one step or all) as of the last tick, sorted like ``Run.parts``."""
        with self._lock:
            return self._index.parts(table, steps=None if step is None else [step], phase=phase)

    def step_rollouts(self, step: int, *, phase: str | None = None, order: str = "length",
                      with_text: bool = True) -> pl.DataFrame:
        """The rollouts of one step, ordered for the drill-down (see :data:`ROLLOUT_ORDERS`)."""
        def read() -> pl.DataFrame:
            frame = scan_parts(self.table_parts("rollouts", step, phase), "rollouts")
            return (frame if with_text else frame.drop("text", "prompt_text")).collect()

        return order_rollouts(self._current(read), order)

    def rollout_tokens(self, step: int, *, rank: int, phase: str, rollout: int) -> pl.DataFrame:
        """One rollout's token rows with each token's ``text`` (``opdwatch.drilldown.rollout_tokens`` on
        this step's files only). Raises OpdwatchError when its token rows were not recorded."""
        from opdwatch.drilldown import rollout_tokens

        return self._current(lambda: rollout_tokens(self.source([step]), step=step, rollout=rollout, rank=rank,
                                                    phase=phase))

    def prompt_history(self, prompt_id: str, *, phase: str | None = None) -> pl.DataFrame:
        """Every recorded rollout of one prompt across steps (no texts), to compare them step by step.
        Scans the rollout table (not the token table); only called on a click."""
        def read() -> pl.DataFrame:
            frame = scan_parts(self.table_parts("rollouts", None, phase), "rollouts").drop("text", "prompt_text")
            return frame.filter(pl.col("prompt_id") == prompt_id).collect()

        return self._current(read).sort(["step", "phase", "sample_index"])

    def _current(self, read: Callable[[], T]) -> T:
        """``read()`` over the files of the last tick; if one of them is gone (a compaction replaced it, a
        resume dropped it), tick and read again."""
        try:
            return read()
        except FileNotFoundError:
            self.tick()
            return read()


def order_rollouts(frame: pl.DataFrame, order: str = "length") -> pl.DataFrame:
    """Sort a rollout frame for the drill-down: ``length`` (longest first), ``repetition`` (most
    repetitive first) or ``advantage`` (lowest mean advantage first); nulls last."""
    if order not in ROLLOUT_ORDERS:
        raise OpdwatchError(f"unknown rollout order {order!r} (one of {sorted(ROLLOUT_ORDERS)})")
    keys = ROLLOUT_ORDERS[order]
    return frame.sort([k for k, _ in keys], descending=[d for _, d in keys], nulls_last=True,
                      maintain_order=True)


__all__ = ["ROLLOUT_ORDERS", "LiveRun", "TickResult", "order_rollouts"]
