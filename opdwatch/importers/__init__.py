"""Import past runs of other frameworks into the run format: ``opdwatch import FORMAT SRC RUN_DIR``.

    from opdwatch.importers import import_run
    report = import_run("verl", "logs/my_project/exp1.jsonl", "runs/exp1", rollouts="rollout_dumps/")
    print(report.signals, [d.line(report.framework) for d in report.disagreements])

Formats, their files and every metric-name mapping: docs/integrations.md ("Importers").
"""

from __future__ import annotations

import os
import warnings
from dataclasses import fields
from pathlib import Path
from typing import Any

from opdwatch.errors import OpdwatchError
from opdwatch.importers.model import ImportedRun, ImportOptions
from opdwatch.importers.registry import FORMAT_MODULES, get
from opdwatch.importers.writer import ImportReport, Progress, write_run

__all__ = ["FORMAT_MODULES", "ImportOptions", "ImportReadWarning", "ImportReport", "import_run", "read_run"]


class ImportReadWarning(UserWarning):
    """Part of the framework's files could not be read; the rest was imported."""


def read_run(fmt: str, src: str | os.PathLike[str], **options: Any) -> ImportedRun:
    """Parse ``src`` as format ``fmt`` without writing anything (keyword options: :class:`ImportOptions`)."""
    path = Path(src)
    if not path.exists():
        raise OpdwatchError(f"{path}: no such file or directory")
    return get(fmt).read(path, _options(options))


def import_run(fmt: str, src: str | os.PathLike[str], run_dir: str | os.PathLike[str], *,
               progress: Progress | None = None, **options: Any) -> ImportReport:
    """Import ``src`` (format ``fmt``) as the new run directory ``run_dir``; warn once about what was unreadable."""
    opts = _options(options)
    run = read_run(fmt, src, **{f.name: getattr(opts, f.name) for f in fields(ImportOptions)})
    report = write_run(run, run_dir, opts, get(fmt).name, progress)
    if report.warnings:
        warnings.warn(f"{src}: " + "; ".join(report.warnings), ImportReadWarning, stacklevel=2)
    return report


def _options(options: dict[str, Any]) -> ImportOptions:
    known = {f.name for f in fields(ImportOptions)}
    if bad := sorted(set(options) - known):
        raise OpdwatchError(f"unknown import option(s) {', '.join(bad)} (known: {', '.join(sorted(known))})")
    for name in ("metrics", "rollouts"):
        if options.get(name) is not None:
            options[name] = Path(options[name])
    if "eos_token_ids" in options:
        options["eos_token_ids"] = tuple(int(t) for t in options["eos_token_ids"] or ())
    return ImportOptions(**options)
