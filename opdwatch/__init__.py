"""opdwatch: watch on-policy distillation runs, explain their failures, stop them before they happen.

The core (this package) needs numpy, polars, pyarrow, plotly and rich only; torch lives in ``opdwatch.trainer``
(the repository's trainer/ folder), imported by the CLI only when `opdwatch train` or `opdwatch demo` runs.
"""

from opdwatch._version import __version__
from opdwatch.errors import OpdwatchError
from opdwatch.metrics import is_repetitive, zlib_tail_ratio
from opdwatch.reader import Run, open_run
from opdwatch.recorder import Recorder, RecorderSettings

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
