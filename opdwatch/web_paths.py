"""Confinement of what a web view reads to its runs root, symlinks included.

    root = runs_root(Path("runs"))          # resolved once
    confine(root / "exp1" / "manifest.json", root)   # the resolved path, or a one-line OpdwatchError
    inside(path, root)                      # the same test as a bool, for listings that skip files

Checking a run directory is not enough: a run inside the root whose ``rollouts/`` (or ``tokens/``,
``steps/``, ``events/``, a ``step=N`` folder, one Parquet file) is a symlink to another run would serve
that run's texts. So every file is checked on its own fully resolved path (``os.path.realpath`` follows
every link of every component), against the resolved root.
"""

from __future__ import annotations

import os
from pathlib import Path

from opdwatch.errors import OpdwatchError


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


__all__ = ["confine", "inside", "runs_root"]
