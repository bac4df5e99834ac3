"""The dashboard's server-side state: one :class:`Watched` run per run directory, shared by all tabs.

Pages never open files themselves: they ask :func:`registry` (the app's :class:`Registry`, stored in
the Flask app so that several apps in one process stay apart) for a run by its root-relative name, which
goes through :func:`opdwatch.web_paths.resolve_run` (nothing outside RUNS_ROOT can be named) and ticks the
run's :class:`opdwatch.live.LiveRun` so the caller sees what was written since the last request. The
LiveRun is opened with ``root=`` RUNS_ROOT: a file of the run that resolves outside the root (a symlinked
``rollouts/`` pointing at another run) is skipped, not served.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import polars as pl
from flask import current_app

from opdwatch.detector.detector import Detector, DetectorState
from opdwatch.detector.replay import steps_to_rows
from opdwatch.live import LiveRun
from opdwatch.web_paths import check_runs_root, list_runs, resolve_run

EXTENSION = "opdwatch"
MAX_OPEN_RUNS = 256  # LiveRuns kept in memory (a few MB each); the least recently used is dropped
# Event kinds a person must notice: the run list's "last alert", the run header's detector line.
ALERT_KINDS = ("alert", "alarm", "warning", "intervention", "error")
T = TypeVar("T")


@dataclass
class Watched:
    """A live run plus an online detector fed with its train steps as they arrive."""

    name: str  # canonical: the resolved run path relative to the resolved root, as list_runs names it
    live: LiveRun
    detector: Detector
    detector_state: DetectorState | None = None
    # When the detector first left ok (the run list and run page tell it beside the verdict)
    first_warning: int | None = None
    first_alarm: int | None = None
    _fed_through: int | None = None
    _cache: dict[str, tuple[int, Any]] = field(default_factory=dict)
    # The run page's last full figures: their structure signature (events drawn, onset) and, per graph,
    # the series column behind each trace, so a later refresh can send only new points (a Patch).
    figure_signature: tuple | None = None
    figure_columns: dict[str, list[str | None]] = field(default_factory=dict)
    # Two tabs may tick the same run at once; the detector must see each step once, in order.
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def tick(self) -> None:
        with self._lock:
            if self.live.tick().reloaded:  # a resume rewrote history: replay the detector from the start
                self.detector.reset()
                self._fed_through = self.first_warning = self.first_alarm = None
            self._feed_detector()

    def _feed_detector(self) -> None:
        # The detector takes each train step once, in order; a metric added to a step after it was fed
        # (a late log_metrics) is not seen by this replay (the trainer's own detector saw it live).
        train = self.live.steps("train").collect()
        if self._fed_through is not None:
            train = train.filter(pl.col("step") > self._fed_through)
        for step, metrics in steps_to_rows(train):
            state = self.detector_state = self.detector.update(step, metrics)
            self._fed_through = step
            if state.level in ("warning", "alarm") and self.first_warning is None:
                self.first_warning = step
            if state.level == "alarm" and self.first_alarm is None:
                self.first_alarm = step

    @property
    def version(self) -> int:
        return self.live.version

    def cached(self, key: str, build: Callable[[], T]) -> T:
        """``build()`` once per run version: tabs showing the same run share the figures (building
        them is most of a refresh's cost on a long run)."""
        version = self.version
        hit = self._cache.get(key)
        if hit is not None and hit[0] == version:
            return hit[1]
        value = build()
        self._cache[key] = (version, value)
        return value

    def last_alert(self) -> dict | None:
        events = self.live.events().filter(pl.col("kind").is_in(ALERT_KINDS))
        return events.row(-1, named=True) if events.height else None


class Registry:
    """Runs under one root, opened on first use and ticked on every later use."""

    def __init__(self, root: Path) -> None:
        self.root = check_runs_root(root)
        self._runs: OrderedDict[Path, Watched] = OrderedDict()
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        return list_runs(self.root)

    def get(self, name: str, *, tick: bool = True) -> Watched:
        """The run ``name`` (root-relative); raises OpdwatchError for anything not a run under the root."""
        path = resolve_run(self.root, name)
        with self._lock:
            watched = self._runs.get(path)
        if watched is None:
            # Labelled by its resolved path, not by the name asked for: the same run reached through an
            # alias (a symlink in the root, "a/./b") must not be labelled by whichever name came first.
            canonical = path.relative_to(self.root).as_posix()
            # The cold load happens outside the lock so that other runs stay reachable meanwhile.
            fresh = Watched(name=canonical, live=LiveRun(path, root=self.root), detector=Detector())
            fresh._feed_detector()
            with self._lock:
                watched = self._runs.setdefault(path, fresh)
                while len(self._runs) > MAX_OPEN_RUNS:
                    self._runs.popitem(last=False)
            tick = tick and watched is not fresh  # just loaded: nothing to tick
        with self._lock:
            if path in self._runs:
                self._runs.move_to_end(path)
        if tick:
            watched.tick()
        return watched


def registry() -> Registry:
    """The current app's registry (call inside a callback or a page layout)."""
    return current_app.extensions[EXTENSION]


def install(server, root: Path) -> Registry:  # noqa: ANN001 - a Flask app
    reg = Registry(root)
    server.extensions[EXTENSION] = reg
    return reg
