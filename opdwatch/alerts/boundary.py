"""The boundary between a training run and what watches it: an exception in the recorder's derived fields, the
detector, the policy or an alert channel must never stop the run.

    guard = Boundary(recorder, strict=False)
    state = None
    with guard("detector", step):          # an exception here is caught, recorded and printed once
        state = detector.update(step, metrics)
    if state is None: ...                  # the guarded work did not finish: carry on without it

A caught exception becomes an ``error`` event in the run's event log (opdwatch.event_log) with its traceback
and where it happened; the first one of each place is printed once to stderr, later ones only recorded.
``strict=True`` (for tests and CI) re-raises instead. Only ``Exception`` is caught: a KeyboardInterrupt or
SystemExit still stops the run. Torch-free and free of network imports.
"""

from __future__ import annotations

import sys
import traceback
from types import TracebackType
from typing import Any, TextIO

_MESSAGE_CHARS = 500  # an error event's message is one line of at most this many characters


class Boundary:
    def __init__(self, recorder: Any = None, *, strict: bool = False, stream: TextIO | None = None,
                 scrub: tuple[str, ...] = ()) -> None:
        """``recorder``: where ``error`` events go (anything with ``event(kind, step=, message=, **data)``;
        None: printed only). ``scrub``: strings (secrets) replaced by ``<redacted>`` in what is recorded."""
        self.recorder = recorder
        self.strict = strict
        self.stream = stream
        self.scrub = tuple(s for s in scrub if s)
        self.counts: dict[str, int] = {}  # errors caught per place
        self._where = ""
        self._step: int | None = None

    def __call__(self, where: str, step: int | None = None) -> Boundary:
        self._where, self._step = where, step
        return self

    def __enter__(self) -> Boundary:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        if exc is None or not isinstance(exc, Exception):
            return False
        return self.caught(self._where, exc, step=self._step)

    def caught(self, where: str, exc: BaseException, *, step: int | None = None) -> bool:
        """Record ``exc`` as caught at ``where``; True (suppress it), or False in strict mode (re-raise)."""
        if self.strict:
            return False
        self.record(where, f"{type(exc).__name__}: {exc}",
                    "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)), step=step)
        return True

    def record(self, where: str, error: str, tb: str, *, step: int | None = None) -> None:
        """Record an error caught elsewhere (an alert channel's, in the delivery thread) like :meth:`caught`."""
        n = self.counts[where] = self.counts.get(where, 0) + 1
        text = self._clean(tb)
        head = (self._clean(f"{where} failed: {error}").splitlines() or [where])[0][:_MESSAGE_CHARS]
        recorded = False
        if self.recorder is not None:
            try:
                self.recorder.event("error", step=step, message=head, where=where, traceback=text, count=n,
                                    training_continues=True)
                recorded = True
            except Exception:  # a full disk must not stop the run either
                recorded = False
        if n == 1:
            where_to = "recorded as an error event in the run" if recorded else "could not be recorded"
            print(f"opdwatch: {head} (step {step}); training continues, {where_to}; later {where} errors are "
                  "recorded, not printed", file=self.stream or sys.stderr)

    def _clean(self, text: str) -> str:
        for secret in self.scrub:
            text = text.replace(secret, "<redacted>")
        return text
