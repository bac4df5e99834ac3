"""The recorder's compaction: a pass in a background thread every k steps, and one on close.

    compactor = BackgroundCompactor(run_dir, every_steps=200, on_close=True)
    compactor.after_step(step)      # rank 0, after each step's metrics row: maybe start a pass
    compactor.close()               # wait for a running pass; then the closing pass if asked for

A pass is :func:`opdwatch.compaction.compact` with ``wait=False`` (if ``opdwatch compact`` runs at the same
time, the thread does nothing) and compacts only final steps, so it needs nothing from the writers: the
recorder keeps writing while it runs. A pass that fails is reported once as a warning (never raised into the
training loop): the run stays readable as it was, and the next pass retries.
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

from opdwatch.compaction import CompactionSettings, compact


class BackgroundCompactor:
    def __init__(self, run_dir: Path, *, every_steps: int, on_close: bool) -> None:
        self.run_dir = run_dir
        self.every_steps = every_steps    # 0: no background passes
        self.on_close = on_close
        self._next = every_steps          # the step at which the next pass may start
        self._thread: threading.Thread | None = None
        self.errors: list[str] = []

    def after_step(self, step: int) -> None:
        if not self.every_steps or step < self._next or (self._thread is not None and self._thread.is_alive()):
            return
        self._next = step + self.every_steps
        # a pass waits until at least every_steps final steps are uncompacted: segments stay large
        settings = CompactionSettings(min_steps=self.every_steps)
        self._thread = threading.Thread(target=self._pass, args=(settings,), name="opdwatch-compaction", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.on_close:
            self._pass(CompactionSettings())

    def _pass(self, settings: CompactionSettings) -> None:
        try:
            compact(self.run_dir, settings=settings, wait=False)
        except Exception as exc:  # noqa: BLE001 - the training loop must not die of housekeeping
            message = f"{self.run_dir}: compaction failed, the run is left as it was ({type(exc).__name__}: {exc})"
            if message not in self.errors:
                self.errors.append(message)
                warnings.warn(message, RuntimeWarning, stacklevel=2)


__all__ = ["BackgroundCompactor"]
