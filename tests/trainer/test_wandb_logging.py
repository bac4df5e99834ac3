"""The loop logs its step metrics to wandb whatever the watch does (opdwatch.loggers, config `log.wandb`)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from opdwatch.trainer.config import load_config
from opdwatch.trainer.loop.loop import train


def _wandb_blob(root: Path, needles: list[bytes], timeout: float = 20.0) -> bytes:
    # wandb's service process writes the .wandb file; under load its last flush can trail finish() a little
    deadline, blob = time.monotonic() + timeout, b""
    while time.monotonic() < deadline:
        blob = b"".join(f.read_bytes() for f in root.rglob("*.wandb"))
        if all(n in blob for n in needles):
            break
        time.sleep(0.2)
    return blob


def test_step_metrics_reach_an_offline_wandb_run_with_the_watch_off(tiny_config, monkeypatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = tiny_config("opd.steps=2", "val.every=2", "run.name=wb", "watch.mode=off", "log.wandb.enabled=true",
                         "log.wandb.mode=offline")
    run_dir = train(config)
    assert list(run_dir.rglob("*.wandb")), "no offline wandb run under the run directory"
    keys = [b"loss/total", b"rollout/truncation_rate", b"control/beta", b"time/record_total", b"val/accuracy"]
    blob = _wandb_blob(run_dir, keys)
    assert [k for k in keys if k not in blob] == []
    assert b"detector/level" not in blob  # the watch was off: only the loop logged


def test_watch_wandb_still_turns_wandb_on_as_an_alias_of_log_wandb(tmp_path: Path) -> None:
    old = tmp_path / "old.yaml"  # a preset written before `log:` existed
    old.write_text("watch:\n  mode: off\n  wandb:\n    enabled: true\n    project: p\n    mode: offline\n")
    config = load_config(old)
    assert (config.wandb.enabled, config.wandb.project, config.wandb.mode) == (True, "p", "offline")
    assert not load_config(None).wandb.enabled
    newer = load_config(old, ["log.wandb.enabled=true", "log.wandb.project=q"])
    assert newer.wandb.project == "q"  # log.wandb wins where both are set
