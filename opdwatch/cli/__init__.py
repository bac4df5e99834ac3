"""The ``opdwatch`` command. It only parses arguments and calls library functions.

Each subcommand lives in its own module here with ``register(subparsers)``, which adds its parser and
sets ``handler`` (a function of the parsed namespace returning an exit code). Heavy imports (torch,
dash) happen inside handlers, so ``opdwatch --help`` stays fast on a laptop without them.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
import warnings
from collections.abc import Sequence
from typing import NoReturn

from opdwatch._version import __version__
from opdwatch.errors import OpdwatchError
from opdwatch.terminal import plain

# Subcommand modules, in the order `opdwatch --help` lists them. A module names its own subcommand in
# register() (`import_run` registers `opdwatch import`: `import` is a Python keyword).
COMMANDS = ("info", "train", "demo", "analyze", "detect", "dashboard", "import_run", "probe", "compact")
EXIT_USAGE = 2
# OS errors that say the path the user gave is the problem (not readable, not writable, not there, full disk);
# other OS errors, and those without a path, may be bugs and stay internal errors
_PATH_ERRNOS = {getattr(errno, name) for name in ("EACCES", "EPERM", "EROFS", "ENOENT", "ENOTDIR", "EISDIR", "EEXIST",
                                                  "ENOSPC", "EDQUOT", "ENAMETOOLONG", "ELOOP") if hasattr(errno, name)}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not usage + message
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="opdwatch", description="Watch on-policy distillation runs: record, analyse, "
                     "detect and stop truncation collapse.")
    parser.add_argument("--version", action="version", version=f"opdwatch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"opdwatch.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"opdwatch.cli.{name}":
                raise
            continue
        module.register(sub)
    return parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    print(f"opdwatch: warning: {plain(message)}", file=sys.stderr)


def path_error(exc: OSError) -> str | None:
    """``PATH: permission denied`` for an OS error about a path the user gave, else None."""
    if exc.filename is None or exc.errno not in _PATH_ERRNOS:
        return None
    reason = "permission denied" if isinstance(exc, PermissionError) else (exc.strerror or "").lower()
    return f"{os.fsdecode(exc.filename)}: {reason or type(exc).__name__}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return EXIT_USAGE
    warnings.showwarning = _one_line_warning
    try:
        return int(args.handler(args) or 0)
    except OpdwatchError as exc:  # plain(): a path in the message may hold a newline or an escape sequence
        print(f"opdwatch: error: {plain(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("opdwatch: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - last resort: one line, traceback on request
        if os.environ.get("OPDWATCH_DEBUG"):
            raise
        # last line of defence: an unreadable run or an unwritable --out that no library call turned into an
        # OpdwatchError is still the user's input at fault
        message = path_error(exc) if isinstance(exc, OSError) else None
        if message is not None:
            print(f"opdwatch: error: {plain(message)}", file=sys.stderr)
            return EXIT_USAGE
        print(f"opdwatch: internal error: {type(exc).__name__}: {plain(exc)} (OPDWATCH_DEBUG=1 shows the "
              "traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
