"""Small helpers for the sentences opdwatch prints (CLI lines, reasons, warnings).

    plural(1, "step")            # "1 step"
    plural(3, "train step")      # "3 train steps"
    named([3, 7, 9, 12], most=3) # "3, 7, 9, ..."
"""

from __future__ import annotations

from collections.abc import Iterable


def plural(n: int, word: str, many: str | None = None) -> str:
    """``n`` and ``word`` agreed in number: ``1 step``, ``2 steps`` (``many`` for irregular plurals)."""
    return f"{n} {word}" if n == 1 else f"{n} {many or word + 's'}"


def named(items: Iterable[object], *, most: int = 5) -> str:
    """The first ``most`` items, comma-separated, with ``...`` when there are more (a warning names a few
    steps, not ten thousand)."""
    items = list(items)
    return ", ".join(map(str, items[:most])) + (", ..." if len(items) > most else "")


__all__ = ["named", "plural"]
