"""The web boundary's path checks: runs are named from outside (a URL, a form field) relative to a runs
root, and nothing a web view reads may leave that root, symlinks included.

    root = check_runs_root("runs")                  # the resolved root, or a one-line OpdwatchError
    list_runs(root)                                 # ["exp1", "group/exp2"]: names, as URLs carry them
    resolve_run(root, "group/exp2")                 # the run directory, or a one-line OpdwatchError
    confine(root / "exp1" / "manifest.json", root)  # the resolved path, or a one-line OpdwatchError
    inside(path, root)                              # the same test as a bool
    Confinement(root).allows(path)                  # ... for listings: a refused path is warned about once

Checking a run directory is not enough: a run inside the root whose ``rollouts/`` (or ``tokens/``,
``steps/``, ``events/``, a ``step=N`` folder, one Parquet file) is a symlink to another run would serve
that run's texts. So every file is checked on its own fully resolved path (``os.path.realpath`` follows
every link of every component), against the resolved root. Plain Python: ``opdwatch dashboard`` checks its
root before dash is imported.
"""

from __future__ import annotations

import os
from pathlib import Path

from opdwatch.errors import OpdwatchError
from opdwatch.format import MANIFEST
from opdwatch.run_files import skipped


def runs_root(root: str | Path) -> Path:
    """``root`` with every symlink resolved (the form :func:`confine` and :func:`inside` compare with)."""
    return Path(os.path.realpath(root))


def inside(path: str | Path, root: Path) -> bool:
    """Whether ``path``, every symlink followed, is ``root`` (resolved, see :func:`runs_root`) or lies
    under it. A dangling link or a loop resolves to a path that is tested the same way."""
    return Path(os.path.realpath(path)).is_relative_to(root)


def confine(path: str | Path, root: Path) -> Path:
    """The resolved ``path``; raises a one-line OpdwatchError when it leaves ``root`` (resolved)."""
    resolved = Path(os.path.realpath(path))
    if not resolved.is_relative_to(root):
        raise OpdwatchError(f"{path}: resolves outside the runs root")
    return resolved


class Confinement:
    """The files a reader lists under ``root``, without those that resolve outside it: a run inside the
    root whose ``rollouts/``, a step folder or a file links to another run must not serve that run's data.
    Each refused path is warned about once (a :class:`~opdwatch.run_files.RunReadWarning`)."""

    def __init__(self, root: str | Path) -> None:
        self.root = runs_root(root)
        self._refused: set[Path] = set()

    def allows(self, path: Path) -> bool:
        if inside(path, self.root):
            return True
        if path not in self._refused:
            self._refused.add(path)
            skipped(f"{path}: skipped, it resolves outside the runs root")
        return False


# ---------------------------------------------------------------------------------------------- runs
def check_runs_root(root: str | Path) -> Path:
    """The resolved runs root, or a one-line OpdwatchError when it is missing or not a directory."""
    path = Path(root)
    if not path.exists():
        raise OpdwatchError(f"{root}: no such directory")
    if not path.is_dir():
        raise OpdwatchError(f"{root}: not a directory")
    return path.resolve()


def resolve_run(root: str | Path, name: str | None) -> Path:
    """The run directory ``name`` (a path relative to ``root``, as shown in URLs) after checking that it
    stays inside ``root``: no absolute paths, no ``..``, no symlink whose target leaves ``root``, and it
    must hold a manifest. Raises a one-line :class:`OpdwatchError` otherwise."""
    if not name or not isinstance(name, str):
        raise OpdwatchError("no run given")
    if "\x00" in name or "\\" in name:
        raise OpdwatchError(f"{name!r}: not a run name")
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts:
        raise OpdwatchError(f"{name!r}: runs are named relative to the runs root")
    base = Path(root).resolve(strict=True)
    try:
        target = (base / rel).resolve(strict=True)
    except (OSError, RuntimeError):  # missing, or a symlink loop
        raise OpdwatchError(f"{name!r}: no such run") from None
    # resolve() followed every symlink, so this also refuses links that point out of the root
    if not inside(target, base) or not target.is_dir():
        raise OpdwatchError(f"{name!r}: not a run under the runs root")
    manifest = target / MANIFEST
    if not manifest.is_file() or not inside(manifest, base):
        raise OpdwatchError(f"{name!r}: not an opdwatch run (no {MANIFEST})")
    return target


def list_runs(root: str | Path, *, max_depth: int = 3) -> list[str]:
    """Names (root-relative, '/'-separated) of the run directories under ``root``, at most ``max_depth``
    levels down. Symlinked directories are not followed, so listing never leaves the root."""
    base = Path(root).resolve(strict=True)
    found: list[str] = []

    def walk(directory: Path, depth: int) -> None:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            return
        names = {e.name for e in entries}
        if MANIFEST in names and directory != base:
            found.append(directory.relative_to(base).as_posix())
            return  # a run's own subdirectories (steps/, tokens/ ...) hold no runs
        if depth >= max_depth:
            return
        for e in entries:
            if not e.name.startswith((".", "_")) and e.is_dir(follow_symlinks=False):
                walk(Path(e.path), depth + 1)

    walk(base, 0)
    return found


__all__ = ["Confinement", "check_runs_root", "confine", "inside", "list_runs", "resolve_run", "runs_root"]
