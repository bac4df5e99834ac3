"""Network libraries are imported only by opdwatch.alerts: an AST scan of our own source (opdwatch/, trainer/,
dashboards/). Libraries we use may import them themselves (wandb imports requests): the rule is about our code."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NETWORK = ("urllib", "smtplib", "http.client", "requests", "slack_sdk")
# urllib.parse only splits and quotes strings (no sockets); the dashboard builds its links with it
PURE = ("urllib.parse",)
ALLOWED = ROOT / "opdwatch" / "alerts"


def network_imports(source: str) -> list[tuple[int, str]]:
    """(line, module) of every import of a network library in ``source`` (``import x``, ``from x import y``,
    ``from http import client``, ``importlib.import_module("x")``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            names = [str(node.args[0].value)]
        found += [(node.lineno, n) for n in names if _within(n, NETWORK) and not _within(n, PURE)]
    return found


def _within(name: str, modules: tuple[str, ...]) -> bool:
    return any(name == m or name.startswith(m + ".") for m in modules)


def test_the_scan_sees_every_form_of_import():
    src = ("import urllib.request\nfrom http import client\nfrom smtplib import SMTP\nimport requests as r\n"
           "import importlib\nimportlib.import_module('slack_sdk')\nimport http.server\nfrom email import message\n"
           "from urllib.parse import quote\nimport urllib\n")
    assert sorted(network_imports(src)) == [(1, "urllib.request"), (2, "http.client"), (3, "smtplib"),
                                            (3, "smtplib.SMTP"), (4, "requests"), (6, "slack_sdk"), (10, "urllib")]



def test_no_network_library_is_imported_outside_the_alerts_package():
    files = [p for d in ("opdwatch", "trainer", "dashboards") for p in (ROOT / d).rglob("*.py")]
    assert len(files) > 50
    offenders = [f"{p.relative_to(ROOT)}:{line}: {mod}" for p in files if ALLOWED not in p.parents
                 for line, mod in network_imports(p.read_text(encoding="utf-8"))]
    assert not offenders, "network imports outside opdwatch/alerts:\n" + "\n".join(offenders)
    inside = [m for p in ALLOWED.rglob("*.py") for _, m in network_imports(p.read_text(encoding="utf-8"))]
    assert {"urllib.request", "smtplib"} <= set(inside)  # the scan does see the channels' imports
