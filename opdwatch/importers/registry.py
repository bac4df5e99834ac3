"""Format name -> the module that reads it. A table, not a chain of ifs: a new format is one line here and
one module with an ``IMPORTER``."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from opdwatch.errors import OpdwatchError
from opdwatch.importers.model import Framework, ImportedRun, ImportOptions


@dataclass(frozen=True)
class Importer:
    name: str                                          # the FORMAT argument of `opdwatch import`
    framework: Framework | None                        # None: the names tell (wandb)
    read: Callable[[Path, ImportOptions], ImportedRun]
    src: str                                           # what SRC is (help text, README table)
    records: str                                       # what the files give: step metrics, texts, tokens


# FORMAT -> module under opdwatch.importers, in the order `opdwatch import --help` lists them
FORMAT_MODULES: dict[str, str] = {
    "verl": "verl",
    "slime": "slime",
    "prime-rl": "prime_rl",
    "nemo-rl": "nemo_rl",
    "tinker": "tinker",
    "trl": "trl_files",
    "wandb": "wandb_file",
}


def get(name: str) -> Importer:
    if name not in FORMAT_MODULES:
        raise OpdwatchError(f"unknown import format {name!r} (one of: {', '.join(FORMAT_MODULES)})")
    return importlib.import_module(f"opdwatch.importers.{FORMAT_MODULES[name]}").IMPORTER


def frameworks() -> list[Framework]:
    """Every framework whose metric names a wandb run may carry."""
    return [imp.framework for imp in map(get, FORMAT_MODULES) if imp.framework is not None]


def framework(name: str) -> Framework:
    by_name = {fw.name: fw for fw in frameworks()}
    if name not in by_name:
        raise OpdwatchError(f"unknown framework {name!r} (one of: {', '.join(by_name)})")
    return by_name[name]
