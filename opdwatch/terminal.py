"""Data on the terminal: run ids, paths and messages are shown as text, never obeyed.

Run ids, paths, statuses and reasons come from run directories and the command line, i.e. from anyone. Rich
reads ``[...]`` in a printed string as markup (``[link=...]`` becomes a live hyperlink, a stray ``[/]`` raises
MarkupError) and ``:name:`` as an emoji, and a terminal obeys the escape sequences in whatever it is sent. So
every piece of data goes through :func:`shown` before it is put into a rich string, through :func:`plain`
before a plain ``print``, and rich consoles come from :func:`console` (no emoji codes).
"""

from __future__ import annotations

import re
from typing import Any

from rich.console import Console
from rich.markup import escape

# C0 controls (but tab), DEL and C1 controls: ESC starts terminal commands, a newline breaks a one-line message
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def plain(value: Any) -> str:
    """``str(value)`` with control characters written out (``\\x1b``, ``\\n``), so it prints as one inert line."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(value))


def shown(value: Any) -> str:
    """``value`` ready to interpolate into rich markup: printed exactly as :func:`plain` gives it."""
    return escape(plain(value))


def console(**kwargs: Any) -> Console:
    """A rich console that prints ``:smile:`` as written (data may contain such codes)."""
    return Console(emoji=False, **kwargs)
