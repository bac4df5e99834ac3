"""Files that appear whole or not at all: write under a hidden temp name, then rename."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


def _temp_name(path: Path) -> Path:
    # Leading dot: pyarrow.dataset and our reader skip hidden files, so a crash mid-write leaves
    # nothing that a reader would try to open.
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_parquet(table: pa.Table, path: Path, *, compression: str = "zstd",
                  dictionary_columns: list[str] | None = None, stats_columns: list[str] | None = None) -> int:
    """Write ``table`` to ``path`` atomically; returns the file size in bytes.

    ``dictionary_columns`` / ``stats_columns`` restrict dictionary encoding and min/max statistics to
    those columns (all when None): on token tables, dictionary-encoding random floats and keeping their
    statistics costs ~40% of the write time and saves nothing.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    pq.write_table(table, tmp, compression=compression,
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
