"""The ``opdwatch`` command. It only parses arguments and calls library functions.

Each subcommand lives in its own module here with ``add_arguments(parser)``, which adds its arguments and sets
``handler`` (a function of the parsed namespace returning an exit code). The name, help line and description of
every subcommand are in :data:`COMMANDS`, so ``opdwatch --help`` imports no subcommand module, and a command
imports only its own module, when argparse picks it: `opdwatch info` loads neither the detector, the importers
nor the report (docs/scale.md, the whole-process figures of `info`; tests/test_lazy_imports.py).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import importlib.util
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple, NoReturn

from opdwatch._version import __version__
from opdwatch.errors import OpdwatchError


class Command(NamedTuple):  # not a dataclass: `dataclasses` imports `inspect`, 10-20 ms of every start
    name: str                        # as typed after `opdwatch`
    help: str                        # its line in `opdwatch --help`
    description: str | None = None   # the text of `opdwatch NAME --help`
    module: str | None = None        # under opdwatch.cli, when not ``name`` (`import` is a Python keyword)

    @property
    def module_name(self) -> str:
        return f"opdwatch.cli.{self.module or self.name}"


# In the order `opdwatch --help` lists them.
COMMANDS = (
    Command("info", "show a run's status, steps and latest health metrics"),
    Command("train", "train with a YAML config (plain OPD or Stable-OPD)",
            "Train with a YAML config; override any field with dotted key=value, e.g. opd.lr=1e-3 opd.beta=0.1. "
            "Presets by name from trainer/configs/ and trainer/recipes/demo/configs/."),
    Command("demo", "run plain OPD and Stable-OPD on the embedded CPU task, same seed",
            "Load the demo teacher and student (shipped with the package and verified against their checksums; "
            "--rebuild-models trains them from scratch), run plain OPD and Stable-OPD from the same seed, and "
            "print where the runs are."),
    Command("analyze", "diagnose runs: onset of length inflation, verdict, report.html"),
    Command("detect", "replay a run through the early-warning detector: when would it have warned?"),
    Command("dashboard", "serve a live dashboard of the runs under a directory",
            "Serve a Dash app to watch runs as they train and drill from a curve down to the tokens behind it. "
            "Only runs under RUNS_ROOT can be opened, and only requests for localhost, 127.0.0.1, [::1], --host "
            "and --allow-host names are answered (see docs/dashboard.md, Security model)."),
    Command("import", "import a past run of verl, slime, prime-rl, NeMo-RL, tinker, TRL or wandb",
            module="import_run"),
    Command("probe", "pre-flight: does the teacher reward loops? (collapse risk of a pair)",
            "Score counterfactual loops (a response's last chunk repeated, EOS at the end and after repeats) with "
            "teacher and student; report the loop incentive and a risk verdict."),
    Command("compact", "compact a run's finished steps into large files (safe while it runs)"),
)

EXIT_USAGE = 2
# OS errors that say the path the user gave is the problem (not readable, not writable, not there, full disk);
# other OS errors, and those without a path, may be bugs and stay internal errors
_PATH_ERRNOS = {getattr(errno, name) for name in ("EACCES", "EPERM", "EROFS", "ENOENT", "ENOTDIR", "EISDIR", "EEXIST",
                                                  "ENOSPC", "EDQUOT", "ENAMETOOLONG", "ELOOP") if hasattr(errno, name)}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not usage + message
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


class _CommandParser(_Parser):
    """A subcommand's parser: its module adds the arguments the first time the command is parsed (argparse parses
    only the chosen command's arguments, so only that module is imported)."""

    def __init__(self, *args: Any, module_name: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.module_name = module_name
        self.loaded = False

    def load(self) -> _CommandParser:
        if not self.loaded:
            self.loaded = True
            importlib.import_module(self.module_name).add_arguments(self)
        return self

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self.load()
        return super().parse_known_args(args, namespace)


def build_parser(load: bool = False) -> argparse.ArgumentParser:
    """The ``opdwatch`` parser; a subcommand's arguments are added when it is parsed, or all now with ``load``
    (to list or document every option)."""
    parser = _Parser(prog="opdwatch", description="Watch on-policy distillation runs: record, analyse, "
                     "detect and stop truncation collapse.")
    parser.add_argument("--version", action="version", version=f"opdwatch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_CommandParser)
    for command in COMMANDS:
        if importlib.util.find_spec(command.module_name) is None:  # not in this installation: not offered
            continue
        kwargs = {} if command.description is None else {"description": command.description}
        p = sub.add_parser(command.name, help=command.help, module_name=command.module_name, **kwargs)
        if load:
            p.load()
    return parser


def plain(value: object) -> str:
    """:func:`opdwatch.terminal.plain`, imported when a message is printed: it imports rich, which `--help` does
    not need."""
    from opdwatch.terminal import plain

    return plain(value)


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
