"""The console channel: an alert as a rich panel on stderr (red for an alarm, yellow for a warning)."""

from __future__ import annotations

from typing import Any

from opdwatch.alerts.message import AlertMessage

_STYLE = {"WARN": "yellow", "ERROR": "red"}


class ConsoleChannel:
    name = "console"

    def __init__(self, *, min_level: str = "WARN", console: Any = None) -> None:
        self.min_level = min_level
        self._console = console  # a rich Console; made on the first alert (stderr)

    def send(self, msg: AlertMessage, timeout: float) -> str:
        from rich.console import Console
        from rich.markup import escape
        from rich.panel import Panel

        if self._console is None:
            self._console = Console(stderr=True)
        body = escape(msg.text().split("\n", 2)[-1])  # the title is the panel's; model text is never markup
        self._console.print(Panel(body, title=escape(msg.title), border_style=_STYLE.get(msg.level, "white")))
        return "printed to stderr"
