"""The events log (``events/rank=NNNNN.jsonl``): one parser for every reader of it.

    read_events(run_dir)                     # all ranks' events, time-ordered (Run.events())
    rows = parse_events(text, path, first_line=n + 1)   # rows of some complete lines (LiveRun's tail)

An events file is appended one JSON object per line by :meth:`opdwatch.recorder.Recorder.event`. A line
that cannot be a row (torn by a crash mid-append, not a JSON object, a field of the wrong type) is skipped,
with one :class:`~opdwatch.run_files.RunReadWarning` per file and read naming the lines, so a damaged log
never hides the rest of it nor ends in a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from opdwatch.format import EVENTS_DIR
from opdwatch.run_files import entries, skipped, why

EVENT_SCHEMA = {"time": pl.Float64, "step": pl.Int64, "rank": pl.Int64, "kind": pl.String, "message": pl.String,
                "data": pl.String}
_INT64 = range(-(2**63), 2**63)
_LINES_NAMED = 5  # a warning names this many skipped lines, then says how many more


def events_files(run_dir: Path) -> list[Path]:
    """The run's events files (one per rank), sorted; an unreadable events directory is warned about."""
    return [Path(e.path) for e in entries(Path(run_dir) / EVENTS_DIR)
            if e.name.startswith("rank=") and e.name.endswith(".jsonl")]


def event_row(line: str) -> dict[str, Any] | None:
    """One line of an events file as a row of :data:`EVENT_SCHEMA`; None for a line that cannot be one."""
    try:
        rec = json.loads(line)
    except ValueError:  # torn, or not JSON (a RecursionError is not expected from one appended line)
        return None
    if not isinstance(rec, dict):
        return None
    time, step, rank = rec.get("time", 0.0), rec.get("step"), rec.get("rank", 0)
    if not _is_number(time) or not (step is None or _is_int64(step)) or not _is_int64(rank):
        return None
    return {"time": float(time), "step": step, "rank": rank, "kind": str(rec.get("kind", "")),
            "message": str(rec.get("message", "")), "data": json.dumps(rec.get("data", {}))}


def parse_events(text: str, path: Path, *, first_line: int = 1) -> list[dict[str, Any]]:
    """The rows of the lines of ``text`` (complete lines of the events file ``path``, the first of them
    line ``first_line``); blank lines are ignored, the others that are no row skipped with one warning."""
    rows, bad = [], []
    for lineno, line in enumerate(text.splitlines(), first_line):
        if not line.strip():
            continue
        row = event_row(line)
        if row is None:
            bad.append(lineno)
        else:
            rows.append(row)
    if len(bad) == 1:
        skipped(f"{path}:{bad[0]}: skipped a torn or unreadable event line")
    elif bad:
        named = ", ".join(map(str, bad[:_LINES_NAMED])) + (", ..." if len(bad) > _LINES_NAMED else "")
        skipped(f"{path}: skipped {len(bad)} torn or unreadable event lines (lines {named})")
    return rows


def events_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """Event rows as a frame of :data:`EVENT_SCHEMA`, time-ordered (ties keep file order)."""
    if not rows:
        return pl.DataFrame(schema=EVENT_SCHEMA)
    return pl.DataFrame(rows, schema=EVENT_SCHEMA, orient="row").sort("time", maintain_order=True)


def read_events(run_dir: Path) -> pl.DataFrame:
    """All ranks' events, time-ordered. An unreadable events file is skipped with a warning."""
    rows: list[dict[str, Any]] = []
    for path in events_files(run_dir):
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            continue
        except OSError as exc:
            skipped(f"{path}: skipped unreadable events file ({why(exc)})", stacklevel=2)
            continue
        rows += parse_events(text, path)
    return events_frame(rows)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int64(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value in _INT64


__all__ = ["EVENT_SCHEMA", "event_row", "events_files", "events_frame", "parse_events", "read_events"]
