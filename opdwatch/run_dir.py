"""Run-directory housekeeping shared by writers: waiting for rank 0, and undoing steps before a resume."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from opdwatch.errors import OpdwatchError
from opdwatch.format import MANIFEST, TABLES, events_path, parse_part
from opdwatch.manifest import read_manifest


def wait_for_manifest(run_dir: Path, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while not (run_dir / MANIFEST).exists():
        if time.monotonic() > deadline:
            raise OpdwatchError(f"{run_dir}: rank 0 did not create the run within {timeout:.0f} s")
        time.sleep(0.05)
    return read_manifest(run_dir)


def drop_after(run_dir: Path, rank: int, step: int) -> None:
    """Remove this rank's table files and events of steps after ``step`` (they are about to be redone)."""
    for table in TABLES:
        for path in (run_dir / table).glob("step=*/rank=*/*.parquet"):
            parsed = parse_part(path)
            if parsed and parsed[0] > step and parsed[1] == rank:
                path.unlink()
                if not any(path.parent.iterdir()):
                    shutil.rmtree(path.parent, ignore_errors=True)
    ev = events_path(run_dir, rank)
    if ev.exists():
        kept = []
        for line in ev.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line from the crash
            if rec.get("step") is None or rec["step"] <= step:
                kept.append(line)
        tmp = ev.with_name(f".{ev.name}.tmp-{os.getpid()}")
        tmp.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
        os.replace(tmp, ev)
