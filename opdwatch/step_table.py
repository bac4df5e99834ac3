"""One set of semantics for a run's step-metrics table, decided here once for every reader of it.

    rows = read_rows(run.parts("steps"))                  # every row, with the file it came from
    table = resolve(rows, root=run.path, rollouts=files_of_steps)
    table.frame        # one row per (step, phase), sorted by step: what Run.steps() / LiveRun.steps() give
    table.facts        # StepFacts: train steps, first/last, missing steps, unknown truncation, collapse step
    table.describe()   # what was odd about the table in one line (warned once per reader), or None

:class:`opdwatch.reader.Run` and :class:`opdwatch.live.LiveRun` both build their step table here, so
``info``, ``analyze``, ``detect``, the dashboard and the notebooks see the same rows and the same facts.
The cases (docs/run-format.md, "Damaged or odd step tables"):

- **A step recorded twice** (two files for one step and phase: a copied ``train-1.parquet``, two ranks
  logging metrics, a row copied into another step's folder): one row is read. A row in its own step's
  folder beats one sitting in another step's folder; then the newest file wins (mtime, then chunk number,
  then rank, then path): a step is recorded twice when it is rewritten, and the rewrite is the newer file.
  Consumers rely on it: the detector refuses a step it has seen, a figure would draw it twice, ``info``
  would count it twice.
- **A row in another step's folder** (its step column disagrees with its ``step=`` folder): it is the step
  its column says (the folder only says where a file sits; moving a file does not change what it
  measured); as a second row of that step it loses to the step's own file.
- **Steps written out of order** (the recorder wrote step 3 after step 6): rows are always read in step
  order; the ``time`` column keeps the write order, and a train step written after a step more than
  :data:`REWRITE_WINDOW` steps later is named in the warning (the recorder itself rewrites the two steps
  before its newest with late metrics: that is not out of order).
- **Gaps** (steps 4-6 never recorded): a fact, not damage (a loop may record every k-th step), counted as
  ``missing_steps``; no warning.
- **Unknown truncation** (NaN or missing in a train row): where the rollouts table has the step's train
  rollouts, the rate is taken from them (what :func:`opdwatch.series.step_series` does for every step, so
  the table and the series agree); otherwise the step's truncation rate is unknown and every consumer
  leaves it out (collapse step, onset, episodes, verdict, the detector's truncation guards: computed over
  the known steps, never as 0). The warning says at how many steps; with none known, "no truncation data".
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from opdwatch import metric_defs
from opdwatch.metric_defs import TRUNCATION_RATE
from opdwatch.run_files import STEP_KEYS, TABLE_SCHEMAS, Part, StepTableWarning, skipped
from opdwatch.segments import scan_part_rows
from opdwatch.text import named, plural

FILE, HOME = "__file__", "__home__"  # a raw row's file (absolute path) and that file's step folder
PROVENANCE = (FILE, HOME)
# The recorder merges late metrics into the two steps before its newest (Recorder._forget_before): a row
# rewritten that late is not written out of order.
REWRITE_WINDOW = 2
COLLAPSE_TRUNCATION = 0.5  # the benchmark's collapse: the first train step whose truncation rate reaches it

RolloutFiles = Callable[[Collection[int]], list[Part]]  # the train rollout files of some steps


# ------------------------------------------------------------------------------------------------ facts
@dataclass(frozen=True)
class StepFacts:
    """What every command reports about a run's train steps (one definition, see :func:`facts_of`)."""

    steps: int                          # train steps in the table (one row each)
    first_step: int | None
    last_step: int | None
    missing_steps: int                  # steps between the first and the last with no train row (gaps)
    truncation_unknown: tuple[int, ...]  # train steps whose truncation rate is unknown (NaN or missing)
    collapse_step: int | None           # first train step with a known truncation rate >= 0.5

    @classmethod
    def of(cls, steps: Sequence[int], truncation: Sequence[float | None]) -> StepFacts:
        """The facts of train steps in step order and their truncation rates (None or NaN: unknown)."""
        known = [(int(s), float(v)) for s, v in zip(steps, truncation, strict=True) if _known(v)]
        unknown = tuple(int(s) for s, v in zip(steps, truncation, strict=True) if not _known(v))
        first, last = (int(steps[0]), int(steps[-1])) if len(steps) else (None, None)
        missing = last - first + 1 - len(set(steps)) if first is not None and last is not None else 0
        return cls(len(steps), first, last, missing, unknown, first_collapse(known))

    @property
    def no_truncation_data(self) -> bool:
        """There are train steps, and not one of them has a known truncation rate."""
        return self.steps > 0 and len(self.truncation_unknown) == self.steps

    def as_dict(self) -> dict[str, object]:
        """The JSON fields ``info``, ``analyze`` and ``detect`` all print (the same keys and values)."""
        return {"steps": self.steps, "first_step": self.first_step, "last_step": self.last_step,
                "missing_steps": self.missing_steps, "truncation_unknown": len(self.truncation_unknown),
                "collapse_step": self.collapse_step}


def first_collapse(pairs: Collection[tuple[int, float]], threshold: float = COLLAPSE_TRUNCATION) -> int | None:
    """The first step of (step, truncation rate) pairs, in step order, whose finite rate reaches ``threshold``."""
    for step, value in pairs:
        if _known(value) and value >= threshold:
            return int(step)
    return None


def facts_of(frame: pl.DataFrame) -> StepFacts:
    """The :class:`StepFacts` of a resolved step table (its train rows)."""
    train = frame.filter(pl.col("phase") == "train") if "phase" in frame.columns else frame
    train = train.sort("step")
    values = train[TRUNCATION_RATE].to_list() if TRUNCATION_RATE in train.columns else [None] * train.height
    return StepFacts.of(train["step"].to_list(), values)


def _known(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


# ------------------------------------------------------------------------------------------------ words
def steps_line(facts: Mapping[str, Any]) -> str:
    """``5 train steps (steps 1-8, 3 missing), last step 8, collapse at step 3``: step facts
    (:meth:`StepFacts.as_dict`, or a JSON summary holding its fields) as ``info`` and the dashboard say them."""
    text = plural(facts["steps"], "train step")
    if facts["steps"]:
        missing = f", {facts['missing_steps']} missing" if facts["missing_steps"] else ""
        text += f" (steps {facts['first_step']}-{facts['last_step']}{missing}), last step {facts['last_step']}"
        text += f", {collapse_text(facts)}"
    return text


def collapse_text(facts: Mapping[str, Any]) -> str:
    """The collapse step in words: ``collapse at step 3``, ``no collapse``, or ``collapse unknown (no
    truncation data)`` when no train step has a known truncation rate."""
    if facts["collapse_step"] is not None:
        return f"collapse at step {facts['collapse_step']}"
    if facts["steps"] and facts["truncation_unknown"] == facts["steps"]:
        return "collapse unknown (no truncation data)"
    return "no collapse"


# ------------------------------------------------------------------------------------------------ table
@dataclass(frozen=True)
class Duplicate:
    step: int
    phase: str
    kept: str                  # the file whose row is read (relative to the run directory)
    ignored: tuple[str, ...]   # the files of the other rows
    why: str                   # "the newest file" | "its own step folder"


@dataclass(frozen=True)
class StepTable:
    frame: pl.DataFrame        # one row per (step, phase), sorted; metric columns Float64
    facts: StepFacts
    duplicates: tuple[Duplicate, ...] = ()
    misplaced: tuple[tuple[str, int, int], ...] = ()  # (file, its folder's step, the step it holds)
    late: tuple[tuple[int, int], ...] = ()            # (train step, a later step written before it)

    def describe(self) -> str | None:
        """What is odd about the table, in one line (the reader's warning), or None."""
        parts = [*self._duplicates(), *self._misplaced(), *self._late(), *self._unknown()]
        return "; ".join(parts) or None

    def _duplicates(self) -> list[str]:
        if not self.duplicates:
            return []
        d = self.duplicates[0]
        first = f"read from {d.kept} ({d.why}), not {', '.join(d.ignored)}"
        if len(self.duplicates) == 1:
            return [f"step {d.step} ({d.phase}) is recorded {_times(len(d.ignored) + 1)}: {first}"]
        steps = named(f"{x.step} ({x.phase})" for x in self.duplicates)
        return [f"{len(self.duplicates)} steps are recorded more than once ({steps}): each is read from one "
                f"file, its own step folder's, else the newest (step {d.step}: {first})"]

    def _misplaced(self) -> list[str]:
        if not self.misplaced:
            return []
        file, home, step = self.misplaced[0]
        if len(self.misplaced) == 1:
            return [f"{file} holds a row of step {step}, not of step {home} (its folder)"]
        return [f"{len(self.misplaced)} files hold rows of another step than their folder's ({file}: step {step}); "
                "each row is the step it holds"]

    def _late(self) -> list[str]:
        if not self.late:
            return []
        step, after = self.late[0]
        if len(self.late) == 1:
            return [f"step {step} was written after step {after} (recorded out of order; read in step order)"]
        return [f"{len(self.late)} train steps were written after later ones (steps {named(s for s, _ in self.late)}, "
                f"step {step} after step {after}; recorded out of order, read in step order)"]

    def _unknown(self) -> list[str]:
        f = self.facts
        if not f.truncation_unknown:
            return []
        if f.no_truncation_data:
            where = "the only train step" if f.steps == 1 else f"all {f.steps} train steps"
            return [f"no truncation data: the truncation rate is unknown (NaN or missing) at {where}"]
        return [f"truncation rate unknown (NaN or missing) at {plural(len(f.truncation_unknown), 'train step')} "
                f"({named(f.truncation_unknown)}): left out of the collapse step, onset and verdict"]


def _times(n: int) -> str:
    return "twice" if n == 2 else f"{n} times"


# ------------------------------------------------------------------------------------------------ reading
def row_schema(parts: list[Part]) -> dict[str, pl.DataType]:
    """The step keys, then every metric column of these files as Float64 (a metric added mid-run is null
    before), then the provenance columns."""
    columns: dict[str, None] = {}
    for p in parts:
        columns.update(dict.fromkeys(p.columns))
    # a metric column that happens to be named like a provenance column is left out, not a clash
    metrics = {c: pl.Float64() for c in columns if c not in STEP_KEYS and c not in PROVENANCE}
    return dict(STEP_KEYS) | metrics


def read_rows(parts: list[Part]) -> pl.DataFrame:
    """Every row of these step-metric files, with its file (:data:`FILE`) and that file's step folder
    (:data:`HOME`): what :func:`resolve` decides from."""
    schema = row_schema(parts)
    if not parts:
        return pl.DataFrame(schema=schema | {FILE: pl.String(), HOME: pl.Int64()})
    frame = scan_part_rows(parts, schema, file_column=FILE).collect()
    home = {os.path.abspath(p.path): p.step for p in parts if p.file_rows is None}
    # a compacted segment holds only rows in their own step's folder (opdwatch.compaction): home = step
    return frame.with_columns(pl.col(FILE).replace_strict(home, default=None, return_dtype=pl.Int64)
                              .fill_null(pl.col("step")).alias(HOME))


def read_table(parts: list[Part], *, root: str | os.PathLike[str] | None = None,
               rollouts: RolloutFiles | None = None) -> StepTable:
    """:func:`resolve` of :func:`read_rows`."""
    return resolve(read_rows(parts), root=root, rollouts=rollouts)


def resolve(rows: pl.DataFrame, *, root: str | os.PathLike[str] | None = None,
            rollouts: RolloutFiles | None = None) -> StepTable:
    """The step table of raw rows (:func:`read_rows`, in any order): one row per (step, phase), unknown
    train truncation rates taken from ``rollouts(steps)`` where they have the step (see the module doc).
    ``root`` (the run directory) makes the files named in :meth:`StepTable.describe` relative to it."""
    base = os.path.abspath(root) if root is not None else None
    misplaced = _misplaced(rows, base)
    duplicates, rows = _one_row_per_step(rows, base)
    frame = rows.drop(PROVENANCE).sort(["step", "phase"])
    frame = _fill_truncation(frame, rollouts)
    return StepTable(frame, facts_of(frame), duplicates, misplaced, _written_out_of_order(frame))


def rollout_truncation(parts: list[Part]) -> pl.DataFrame:
    """``step`` and the truncation rate of the rollout rows of these files, by their step column (the
    series' own definition of the metric, :func:`opdwatch.series.metric_expr`)."""
    from opdwatch.series import metric_expr  # the analysis layer, which imports the reader: loaded late

    schema = TABLE_SCHEMAS["rollouts"]
    spec = next(d for d in metric_defs.ROLLOUT_METRICS if d.key == TRUNCATION_RATE)
    return (scan_part_rows(parts, schema).select("step", spec.source)
            .group_by("step").agg(metric_expr(spec, schema, ordered=True)).collect())


def _rel(file: str, base: str | None) -> str:
    if base is not None and file.startswith(base + os.sep):
        return os.path.relpath(file, base)
    return file


def _misplaced(rows: pl.DataFrame, base: str | None) -> tuple[tuple[str, int, int], ...]:
    stray = (rows.filter(pl.col("step") != pl.col(HOME)).select(FILE, HOME, "step")
             .unique(maintain_order=True).sort(HOME, FILE, "step"))
    return tuple((_rel(f, base), int(h), int(s)) for f, h, s in stray.iter_rows())


def _one_row_per_step(rows: pl.DataFrame, base: str | None) -> tuple[tuple[Duplicate, ...], pl.DataFrame]:
    dup = rows.select(pl.struct("step", "phase").is_duplicated()).to_series()
    if not dup.any():
        return (), rows
    single, many = rows.filter(~dup), rows.filter(dup)
    mtimes = {f: _mtime(f) for f in many[FILE].unique().to_list()}
    groups: dict[tuple[int, str], list[tuple[int, int, str, int]]] = {}
    for i, (step, phase, rank, file, home) in enumerate(many.select("step", "phase", "rank", FILE, HOME).iter_rows()):
        groups.setdefault((step, phase), []).append((i, -1 if rank is None else rank, file, home))
    keep, found = [], []
    for (step, phase), members in sorted(groups.items()):
        def order(m: tuple[int, int, str, int], step: int = step) -> tuple[bool, int, int, int, str]:
            _, rank, file, home = m
            return home == step, mtimes[file], _chunk(file), rank, file

        best = max(members, key=order)
        keep.append(best[0])
        own = best[3] == step and any(m[3] != step for m in members)
        ignored = tuple(dict.fromkeys(_rel(m[2], base) for m in members if m is not best))
        found.append(Duplicate(step, phase, _rel(best[2], base), ignored,
                               "its own step folder" if own else "the newest file"))
    return tuple(found), pl.concat([single, many[keep]])


def _mtime(file: str) -> int:
    try:
        return os.stat(file).st_mtime_ns
    except OSError:  # gone since the scan (a resume dropping steps): the oldest
        return 0


def _chunk(file: str) -> int:
    """The chunk number of ``train-2.parquet`` (2); ``train.parquet`` is chunk 0."""
    stem = Path(file).name.removesuffix(".parquet")
    tail = stem.rpartition("-")[2] if "-" in stem else ""
    return int(tail) if tail.isdigit() else 0


def _fill_truncation(frame: pl.DataFrame, rollouts: RolloutFiles | None) -> pl.DataFrame:
    """Unknown train truncation rates from the step's train rollouts, where the rollouts table has them."""
    if rollouts is None or frame.height == 0:
        return frame
    has = TRUNCATION_RATE in frame.columns
    rate = pl.col(TRUNCATION_RATE)
    unknown = (pl.col("phase") == "train") & ((rate.is_null() | rate.is_nan()) if has else pl.lit(True))
    steps = set(frame.filter(unknown)["step"].to_list())
    if not steps:
        return frame
    parts = rollouts(steps)
    if not parts:
        return frame
    known = rollout_truncation(parts).filter(pl.col("step").is_in(steps) & pl.col(TRUNCATION_RATE).is_not_null())
    if known.height == 0:
        return frame
    if not has:
        frame = frame.with_columns(pl.lit(None, dtype=pl.Float64).alias(TRUNCATION_RATE))
    fill = "__rollouts__"
    frame = frame.join(known.rename({TRUNCATION_RATE: fill}), on="step", how="left")
    frame = frame.with_columns(pl.when(unknown & pl.col(fill).is_not_null()).then(pl.col(fill))
                               .otherwise(rate).alias(TRUNCATION_RATE))
    return frame.drop(fill).sort(["step", "phase"])


def _written_out_of_order(frame: pl.DataFrame) -> tuple[tuple[int, int], ...]:
    """(step, later step) for each train step written after a step more than REWRITE_WINDOW steps later."""
    if "time" not in frame.columns or frame.height < 2:
        return ()
    t = (frame.filter((pl.col("phase") == "train") & pl.col("time").is_not_null() & pl.col("time").is_not_nan())
         .select("step", "time").sort("step"))
    # polars, not numpy: `opdwatch info` on a compacted run imports no numpy (docs/scale.md)
    steps, times = t["step"], t["time"]
    n = len(steps)
    if n < 2:
        return ()
    earliest_after = times.cum_min(reverse=True)  # [j]: the earliest write of rows j..n-1
    j = steps.search_sorted(steps + REWRITE_WINDOW, side="right")  # first row more than the window later
    late = (j < n) & (earliest_after.gather(j.clip(upper_bound=n - 1)) < times)
    step_list, time_list, j_list = steps.to_list(), times.to_list(), j.to_list()
    out = []
    for i in late.arg_true().to_list():
        later = next(k for k in range(j_list[i], n) if time_list[k] < time_list[i])
        out.append((step_list[i], step_list[later]))
    return tuple(out)


# ------------------------------------------------------------------------------------------------ warning
class StepWarnings:
    """Warns about a reader's step table once: again only when what is odd about it changes. A command
    reads the table for the series, the facts and the replay; it prints one line, not three, whatever
    Python's warnings filter would dedupe (it keys on the warning's location and text)."""

    def __init__(self) -> None:
        self._said: str | None = None

    def warn(self, path: str | os.PathLike[str], table: StepTable) -> None:
        text = table.describe()
        if text is not None and text != self._said:
            skipped(f"{path}: {text}", stacklevel=4, category=StepTableWarning)
        self._said = text


__all__ = ["COLLAPSE_TRUNCATION", "FILE", "HOME", "PROVENANCE", "REWRITE_WINDOW", "Duplicate", "StepFacts",
           "StepTable", "StepWarnings", "collapse_text", "facts_of", "first_collapse", "read_rows", "read_table",
           "resolve", "rollout_truncation", "row_schema", "steps_line"]
