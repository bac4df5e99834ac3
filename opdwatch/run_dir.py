"""Run-directory housekeeping shared by writers: waiting for rank 0, undoing steps before a resume, and
sweeping the temp files of writers that were killed."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from opdwatch.atomic import remove_stale_temps
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
    """Remove this rank's table files and events of steps after ``step`` (they are about to be redone).

    Rank 0 first un-compacts every segment holding steps after ``step`` (:func:`opdwatch.uncompaction.
    uncompact_after`, for all ranks: every rank resumes from the same step)."""
    if rank == 0:
        from opdwatch.uncompaction import uncompact_after  # reads through the analysis layer: loaded late

        uncompact_after(run_dir, step)
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


def sweep_stale_temps(run_dir: Path, rank: int) -> list[Path]:
    """Remove the temp files that killed writers of ``rank`` left in the run (see
    :func:`opdwatch.atomic.is_stale_temp`); partition directories left empty go too. Returns what was
    removed.

    Only this rank's own files are swept (its partitions, its events file's temp; rank 0 also the run's top
    level, where the manifest is written): ranks may run on other hosts, where a live writer's pid means
    nothing here, but no other process writes this rank's files.
    """
    removed = remove_stale_temps(run_dir) if rank == 0 else []
    events = events_path(run_dir, rank)
    removed += remove_stale_temps(events.parent, prefix=f".{events.name}.")  # drop_after's rewrite of it
    for table in TABLES:
        try:
            with os.scandir(run_dir / table) as it:
                step_dirs = [Path(e.path) for e in it if e.name.startswith("step=")]
        except (FileNotFoundError, NotADirectoryError):
            continue
        for step_dir in step_dirs:
            rank_dir = step_dir / f"rank={rank:05d}"
            swept = remove_stale_temps(rank_dir)
            if swept:
                removed += swept
                for directory in (rank_dir, step_dir):  # rmdir only removes an empty directory
                    try:
                        directory.rmdir()
                    except OSError:
                        break
    return removed
