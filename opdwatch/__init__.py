"""opdwatch: watch on-policy distillation runs, explain their failures, stop them before they happen.

The core (this package) needs numpy, polars, pyarrow, plotly and rich only; torch lives in ``opdwatch.trainer``
(the repository's trainer/ folder), imported by the CLI only when `opdwatch train` or `opdwatch demo` runs.

The names below are imported when first used (PEP 562): ``import opdwatch`` alone, which every ``opdwatch.*``
import and every `opdwatch` command runs first, then costs nothing, and `opdwatch --help` or `opdwatch info`
load only what they use (docs/scale.md).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from opdwatch._version import __version__

if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from opdwatch.errors import OpdwatchError
    from opdwatch.metrics import is_repetitive, zlib_tail_ratio
    from opdwatch.reader import Run, open_run
    from opdwatch.recorder import Recorder, RecorderSettings

# exported name -> the module that defines it
_LAZY = {
    "OpdwatchError": "opdwatch.errors",
    "Recorder": "opdwatch.recorder",
    "RecorderSettings": "opdwatch.recorder",
    "Run": "opdwatch.reader",
    "is_repetitive": "opdwatch.metrics",
    "open_run": "opdwatch.reader",
    "zlib_tail_ratio": "opdwatch.metrics",
}

__all__ = [
    "OpdwatchError",
    "Recorder",
    "RecorderSettings",
    "Run",
    "__version__",
    "is_repetitive",
    "open_run",
    "zlib_tail_ratio",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'opdwatch' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
