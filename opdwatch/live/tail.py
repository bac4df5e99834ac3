"""Follow a run's events files from where the last read stopped (``tail -f`` for the events log).

    tail = EventTail(run_dir)
    rows = tail.read_new()   # rows of the complete lines appended since, or None: a file was replaced
                             # or cut (a resume rewrote it), so the log must be read again from the start

Only complete lines are read: a torn last line (a writer mid-append) waits for the next read. Lines are
parsed by :func:`opdwatch.event_log.parse_events`, the parser of the full read, so both readers give the
same rows and skip (and warn about) the same lines.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opdwatch.event_log import events_files, parse_events
from opdwatch.run_files import skipped, why


@dataclass(frozen=True)
class _Position:
    inode: int
    offset: int   # bytes read: the end of the last complete line
    lines: int    # lines read, to name a skipped line by its line number


class EventTail:
    """Byte offsets into each events file of one run directory. ``allows`` filters the files (the web
    boundary's root confinement, :class:`opdwatch.web_paths.Confinement`); None keeps every one."""

    def __init__(self, run_dir: Path, allows: Callable[[Path], bool] | None = None) -> None:
        self.run_dir = run_dir
        self._allows = allows
        self._positions: dict[Path, _Position] = {}

    def read_new(self) -> list[dict[str, Any]] | None:
        """The rows of the lines appended to each file since the last call, files in name order; None
        when a file was replaced or cut. Raises FileNotFoundError when a file vanished mid-read (the
        caller reloads). An unreadable file is skipped with a warning and tried again next time."""
        rows: list[dict[str, Any]] = []
        for path in events_files(self.run_dir):
            if self._allows is not None and not self._allows(path):
                continue
            try:
                st = path.stat()
                pos = self._positions.get(path, _Position(st.st_ino, 0, 0))
                if pos.inode != st.st_ino or st.st_size < pos.offset:
                    return None  # replaced or cut (a Recorder resume rewrites it): history changed
                if st.st_size == pos.offset:
                    continue
                with open(path, "rb") as fh:
                    fh.seek(pos.offset)
                    chunk = fh.read(st.st_size - pos.offset)
            except PermissionError as exc:  # skipped like Run.events() skips it; tried again next time
                skipped(f"{path}: skipped unreadable events file ({why(exc)})", stacklevel=2)
                continue
            end = chunk.rfind(b"\n") + 1  # a torn last line waits for the next read
            text = chunk[:end].decode("utf-8", errors="replace")
            rows += parse_events(text, path, first_line=pos.lines + 1)
            self._positions[path] = _Position(pos.inode, pos.offset + end, pos.lines + text.count("\n"))
        return rows


__all__ = ["EventTail"]
