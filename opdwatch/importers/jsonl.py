"""JSON-lines files as frameworks write them, read leniently: a torn last line or a garbled line is skipped
and counted, never fatal (the writer turns the counts into one warning line)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from opdwatch.errors import OpdwatchError


def read_jsonl(path: Path, skipped: list[str]) -> Iterator[dict[str, Any]]:
    """The JSON objects of ``path``, one per line. Lines that are not a JSON object are appended to
    ``skipped`` as ``path:line``."""
    try:
        fh = open(path, "rb")  # noqa: SIM115 - the open error and the read loop are reported differently
    except OSError as exc:
        raise OpdwatchError(f"{path}: cannot read ({exc.strerror or exc})") from None
    with fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                skipped.append(f"{path.name}:{lineno}")
                continue
            if isinstance(obj, dict):
                yield obj
            else:
                skipped.append(f"{path.name}:{lineno}")


def skipped_warning(what: str, skipped: list[str]) -> str | None:
    if not skipped:
        return None
    shown = ", ".join(skipped[:3]) + (" ..." if len(skipped) > 3 else "")
    return f"skipped {len(skipped)} unreadable {what} ({shown})"


def as_int(value: Any) -> int | None:
    """A step number from a record (int, integral float or digit string), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None
