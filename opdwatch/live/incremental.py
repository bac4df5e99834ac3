"""A run's table files, listed again only where they can have changed (the incremental half of a tick).

    index = PartIndex(run_dir)
    new_steps, dirty = index.update()     # steps seen for the first time, steps whose files changed
    index.parts("rollouts", steps=[40])   # one step's files, sorted like Run.parts

Each table's step directories are listed (one ``readdir``), but only the partitions from
:data:`RESCAN_BACK` steps before the newest seen are looked into: the recorder may still rewrite those
(late ``log_metrics``, a validation row), older ones are final. Every file is remembered with the
(size, mtime_ns) its footer was read at, so an unchanged file is never read again, and a skipped one
(unreadable, wrong-typed: see :mod:`opdwatch.run_files`) is re-read, and re-warned about, only when it
changes.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from pathlib import Path

from opdwatch.format import TABLES
from opdwatch.run_files import Part, entries, part_order, read_part, step_dirs, step_files
from opdwatch.segments import COMPACTED_DIR, Coverage, Segment, list_segments

# The recorder keeps merging late metrics into the two steps before its newest (Recorder._forget_before),
# so those step files can still be rewritten after we have read them.
RESCAN_BACK = 2


class PartIndex:
    """table -> step -> {file: Part} of one run directory, kept up to date by :meth:`update`.

    ``allows`` filters every listed directory and file (the web boundary's root confinement,
    :class:`opdwatch.web_paths.Confinement`); None keeps everything.
    """

    def __init__(self, run_dir: Path, allows: Callable[[Path], bool] | None = None) -> None:
        self.run_dir = run_dir
        self._allows = allows
        self._parts: dict[str, dict[int, dict[Path, Part]]] = {t: {} for t in TABLES}
        self._sigs: dict[Path, tuple[int, int]] = {}  # the (size, mtime_ns) each file was last read at
        self._segments: dict[str, Segment] = {}  # committed segments seen (opdwatch.segments), by name
        self._coverage = Coverage([])

    def steps_seen(self) -> set[int]:
        return {s for by_step in self._parts.values() for s in by_step}

    def update(self) -> tuple[int, set[int]]:
        """List each table's step partitions from RESCAN_BACK steps before the newest seen; returns the
        number of new steps and the steps whose files changed (new, rewritten or removed)."""
        seen = self.steps_seen()
        since = max(seen) - RESCAN_BACK if seen else None
        dirty: set[int] = set()
        if not seen:  # the cold open: partitions that segments already cover are not looked into
            self._coverage = Coverage(list_segments(self.run_dir, self._allows))
        for table in TABLES:
            known = self._parts[table]
            listed = {step: d for step, d in step_dirs(self.run_dir / table, since)
                      if self._allowed(d) and step not in self._coverage}
            for step, directory in listed.items():
                files = {f: sig for f, sig in step_files(directory).items() if self._allowed(f)}
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
            for step in [s for s in known if since is not None and s >= since and s not in listed
                         and s not in self._coverage]:
                dirty.add(step)
                del known[step]
        dirty |= self._update_segments()  # after the partitions (see opdwatch.segments)
        return len(self.steps_seen() - seen), dirty

    def _update_segments(self) -> set[int]:
        """Take in segments committed since the last update: their slices replace the files of the steps
        they cover. Raises FileNotFoundError when a segment seen before is gone (a resume un-compacted it:
        history changed, the caller reloads)."""
        names = {e.name for e in entries(self.run_dir / COMPACTED_DIR)}
        if not self._segments.keys() <= names:
            raise FileNotFoundError("a compacted segment was retired")
        fresh = [seg for seg in list_segments(self.run_dir, self._allows) if seg.path.name not in self._segments]
        dirty: set[int] = set()
        for seg in fresh:
            self._segments[seg.path.name] = seg
            for table in TABLES:
                known = self._parts[table]
                for step in [s for s in known if seg.covers(s)]:
                    for path in known.pop(step):
                        self._sigs.pop(path, None)
                    dirty.add(step)
                for part in seg.parts(table):
                    # slices share their file: keyed apart by rank (a key only, never opened)
                    known.setdefault(part.step, {})[Path(f"{part.path}#{part.rank}")] = part
                    dirty.add(part.step)
        if fresh:
            self._coverage = Coverage(sorted(self._segments.values(), key=lambda s: s.first_step))
        return dirty

    def parts(self, table: str, *, steps: Collection[int] | None = None, phase: str | None = None) -> list[Part]:
        """The files of ``table`` (of ``steps``, or all; of one phase, or all), sorted like ``Run.parts``."""
        by_step = self._parts[table]
        groups = by_step.values() if steps is None else [by_step[s] for s in steps if s in by_step]
        return sorted((p for g in groups for p in g.values() if phase is None or p.phase == phase), key=part_order)

    def steps_with_files(self, table: str) -> list[int]:
        """The steps that have readable files of ``table``."""
        return sorted(s for s, files in self._parts[table].items() if files)

    def _allowed(self, path: Path) -> bool:
        return self._allows is None or self._allows(path)


__all__ = ["RESCAN_BACK", "PartIndex"]
