"""Files that appear whole or not at all: write under a hidden temp name, then rename.

A writer killed mid-write leaves its hidden temp behind. Every temp name of ours carries the writer's pid
(``.train.parquet.tmp-<pid>``, ``.tmp-<pid>-XXXX`` checkpoint and ``.<role>.tmp-<pid>-XXXX`` model-cache
build directories), so the next writer can tell a leftover of a dead process from a write in progress:
:func:`is_stale_temp` is that test, :func:`remove_stale_temps` applies it to one directory. Writers call
it when they open a directory for writing; readers never delete anything.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported by write_parquet: readers of JSON files (the manifest) need no pyarrow
    import pyarrow as pa

# hidden, "tmp-<pid>" after the dot or as the whole stem, and the random suffix of tempfile.mkdtemp if any
_TEMP_NAME = re.compile(r"\.(?:.+\.)?tmp-(\d+)(?:-[a-z0-9_]+)?")


def _temp_name(path: Path) -> Path:
    # Leading dot: pyarrow.dataset and our reader skip hidden files, so a crash mid-write leaves
    # nothing that a reader would try to open.
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def is_stale_temp(path: Path) -> bool:
    """Whether ``path`` is one of our temp files or directories and the process that wrote it is gone.

    Only names that carry a pid qualify (older pid-less temps are kept: their writer cannot be checked).
    A pid is alive while ``os.kill(pid, 0)`` finds it, including another user's process (PermissionError)
    and the pid of this process. The check is host-local, so callers only sweep directories that no
    process on another host writes at the same time (a rank's own partitions, rank 0's checkpoints).
    """
    match = _TEMP_NAME.fullmatch(path.name)
    if match is None or os.name != "posix":  # on Windows os.kill(pid, 0) would terminate the process
        return False
    try:
        os.kill(int(match.group(1)), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    except OverflowError:
        return True  # larger than any pid: no process can hold it
    return False


def remove_stale_temps(directory: Path, *, prefix: str = ".") -> list[Path]:
    """Delete the stale temps (see :func:`is_stale_temp`) directly inside ``directory`` whose names start
    with ``prefix``; returns what was removed. A missing directory has none."""
    try:
        with os.scandir(directory) as it:
            candidates = [Path(e.path) for e in it if e.name.startswith(prefix)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed = []
    for path in candidates:
        if not is_stale_temp(path):
            continue
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:
            continue  # another writer swept it first
        removed.append(path)
    return removed


def write_parquet(table: pa.Table, path: Path, *, compression: str = "zstd",
                  dictionary_columns: list[str] | None = None, stats_columns: list[str] | None = None) -> int:
    """Write ``table`` to ``path`` atomically; returns the file size in bytes.

    ``dictionary_columns`` / ``stats_columns`` restrict dictionary encoding and min/max statistics to
    those columns (all when None): on token tables, dictionary-encoding random floats and keeping their
    statistics costs ~40% of the write time and saves nothing.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    # An OSFile opens the path as given: handed a string, pyarrow expands a leading ~ and parses "file:..."
    # as a URI, so a run at ./~ or ./file:x would be written somewhere else.
    with pa.OSFile(os.fspath(tmp), "wb") as sink:
        pq.write_table(table, sink, compression=compression,
                       use_dictionary=True if dictionary_columns is None else dictionary_columns,
                       write_statistics=True if stats_columns is None else stats_columns)
    os.replace(tmp, path)
    return path.stat().st_size


def write_json(obj: Any, path: Path) -> None:
    """Write JSON atomically (fsync before rename so a power cut leaves the old or the new file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=str)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
