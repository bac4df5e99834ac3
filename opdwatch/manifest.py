"""The run manifest: what a run is, who wrote it, and where it stands."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from opdwatch._version import __version__
from opdwatch.atomic import write_json
from opdwatch.errors import CorruptRunError, FormatVersionError, NotARunError
from opdwatch.format import FORMAT_NAME, FORMAT_VERSION, MANIFEST, STATUSES


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def code_commit() -> str | None:
    """The git commit of the opdwatch source tree, when it is a checkout (None for a wheel install)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
            capture_output=True, text=True, timeout=5, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def new_manifest(*, run_id: str, config: dict[str, Any], tokenizer: dict[str, Any],
                 recorder_settings: dict[str, Any], world_size: int) -> dict[str, Any]:
    stamp = now_iso()
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "run_id": run_id,
        "created_at": stamp,
        "updated_at": stamp,
        "status": "running",
        "last_step": None,
        "world_size": world_size,
        "config": config,
        "tokenizer": tokenizer,
        "recorder": recorder_settings,
        "code": {"git_commit": code_commit(), "opdwatch_version": __version__},
        "pid": None,
        "heartbeat": time.time(),
    }


def write_manifest(run_dir: Path, manifest: dict[str, Any]) -> None:
    if manifest.get("status") not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {manifest.get('status')!r}")
    manifest["updated_at"] = now_iso()
    manifest["heartbeat"] = time.time()
    write_json(manifest, run_dir / MANIFEST)


def read_manifest(run_dir: Path) -> dict[str, Any]:
    """Read and check a run's manifest; raises a one-line OpdwatchError for anything that is not a v1 run."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise NotARunError(f"{run_dir}: no such directory")
    if not run_dir.is_dir():
        raise NotARunError(f"{run_dir}: not a directory")
    path = run_dir / MANIFEST
    if not path.exists():
        raise NotARunError(f"{run_dir}: not an opdwatch run (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptRunError(f"{path}: unreadable manifest ({type(exc).__name__}: {exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise NotARunError(f"{path}: not an opdwatch manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise FormatVersionError(
            f"{path}: run format version {version!r} is not supported (this opdwatch reads v{FORMAT_VERSION})"
        )
    return manifest
