"""Temp files and directories of killed writers are removed by the next writer; a live writer's never are."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

import opdwatch.trainer.loop.checkpoint as checkpoint
import opdwatch.trainer.recipes.demo.demo_teacher as demo_teacher
from opdwatch.atomic import is_stale_temp, remove_stale_temps
from opdwatch.reader import open_run
from opdwatch.recorder import Recorder
from opdwatch.trainer.config import load_config
from tests.test_reader import small_run


@pytest.fixture
def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    try:
        os.kill(proc.pid, 0)
    except ProcessLookupError:
        return proc.pid
    pytest.skip(f"pid {proc.pid} was reused at once")


@pytest.fixture
def live_pid():
    """The pid of a live writer other than this process (whose own temp names the Recorder reuses)."""
    proc = subprocess.Popen(["sleep", "600"])
    yield proc.pid
    proc.kill()
    proc.wait()


def _touch(path: Path, *, directory: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        path.mkdir()
        (path / "state.pt").write_bytes(b"half a checkpoint")
    else:
        path.write_bytes(b"PAR1 half a file")
    return path


def test_is_stale_temp_needs_our_name_and_a_dead_pid(tmp_path, dead_pid, monkeypatch):
    live = os.getpid()
    for name in (f".train.parquet.tmp-{dead_pid}", f".manifest.json.tmp-{dead_pid}",
                 f".rank=00000.jsonl.tmp-{dead_pid}", f".tmp-{dead_pid}-k2x_9a1b", f".teacher.tmp-{dead_pid}-ab12cd34"):
        assert is_stale_temp(tmp_path / name), name
    for name in (f".train.parquet.tmp-{live}", f".tmp-{live}-k2x_9a1b", "train.parquet",
                 f"train.parquet.tmp-{dead_pid}", ".tmp-k2x_9a1b", f".teacher-{dead_pid}", f".notatmp-{dead_pid}",
                 "step-000004"):
        assert not is_stale_temp(tmp_path / name), name

    def other_users_process(pid: int, sig: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "kill", other_users_process)  # alive, just not ours to signal
    assert not is_stale_temp(tmp_path / f".train.parquet.tmp-{dead_pid}")


def test_remove_stale_temps_keeps_live_ones_and_everything_else(tmp_path, dead_pid):
    dead = [_touch(tmp_path / f".a.parquet.tmp-{dead_pid}"), _touch(tmp_path / f".tmp-{dead_pid}-x1", directory=True)]
    kept = [_touch(tmp_path / f".a.parquet.tmp-{os.getpid()}"), _touch(tmp_path / "a.parquet"),
            _touch(tmp_path / ".tmp-oldstyle", directory=True)]
    assert sorted(remove_stale_temps(tmp_path)) == sorted(dead)
    assert [p.exists() for p in dead] == [False, False] and all(p.exists() for p in kept)
    assert remove_stale_temps(tmp_path / "missing") == []


@pytest.mark.parametrize("name", ["r", "run[12]"])
def test_resume_removes_a_dead_writers_temps_of_its_rank_only(tmp_path, dead_pid, live_pid, name):
    (tmp_path / "run1").mkdir()  # a sibling that "run[12]" matches as a glob pattern: must stay untouched
    sibling_temp = _touch(tmp_path / "run1" / "steps" / "step=000001" / "rank=00000" / f".train.parquet.tmp-{dead_pid}")
    path = small_run(tmp_path / name, steps=4, close=False)
    part = path / "steps" / "step=000001" / "rank=00000"
    dead = [
        _touch(part / f".train.parquet.tmp-{dead_pid}"),
        _touch(path / f".manifest.json.tmp-{dead_pid}"),
        _touch(path / "events" / f".rank=00000.jsonl.tmp-{dead_pid}"),
        _touch(path / "tokens" / "step=000009" / "rank=00000" / f".train.parquet.tmp-{dead_pid}"),  # killed mid-step
    ]
    live = [
        _touch(part / f".val.parquet.tmp-{os.getpid()}"),
        _touch(path / f".manifest.json.tmp-{live_pid}"),
        _touch(path / "events" / f".rank=00000.jsonl.tmp-{live_pid}"),
    ]
    other_rank = [
        _touch(path / "rollouts" / "step=000001" / "rank=00001" / f".train.parquet.tmp-{dead_pid}"),
        _touch(path / "events" / f".rank=00001.jsonl.tmp-{dead_pid}"),
    ]

    Recorder.create(path, resume_from_step=2)
    assert [p.exists() for p in dead] == [False] * len(dead)
    assert not (path / "tokens" / "step=000009").exists()  # the partition it left is gone too
    assert all(p.exists() for p in live + other_rank) and sibling_temp.exists()
    assert open_run(path).step_numbers == [0, 1, 2]

    Recorder.create(path, rank=1, resume_from_step=2)  # rank 1 sweeps its own
    assert [p.exists() for p in other_rank] == [False, False]
    assert all(p.exists() for p in live)


def test_new_run_removes_a_killed_first_manifest_write(tmp_path, dead_pid, live_pid):
    path = tmp_path / "r"
    dead = _touch(path / f".manifest.json.tmp-{dead_pid}")
    live = _touch(path / f".manifest.json.tmp-{live_pid}")
    Recorder.create(path).close()
    assert not dead.exists() and live.exists()
    assert open_run(path).status == "finished"


def test_recorder_writes_runs_at_paths_pyarrow_would_reinterpret(tmp_path, monkeypatch):
    """pyarrow expands a leading ~ of a path string: the recorder must write under ./~, not $HOME."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    small_run("~", steps=2)
    assert open_run(tmp_path / "~").step_numbers == [0, 1]
    assert list(home.iterdir()) == []


def test_checkpoint_save_and_listing_remove_dead_saves_only(tmp_path, dead_pid, monkeypatch):
    root = tmp_path / checkpoint.CHECKPOINTS
    dead = _touch(root / f".tmp-{dead_pid}-abcd1234", directory=True)
    live = _touch(root / f".tmp-{os.getpid()}-efgh5678", directory=True)
    old_style = _touch(root / ".tmp-ijkl9012", directory=True)  # pid-less (an older trainer): cannot be checked

    assert checkpoint.list_checkpoints(tmp_path) == []  # the resume's listing sweeps
    assert not dead.exists() and live.exists() and old_style.exists()

    dead2 = _touch(root / f".tmp-{dead_pid}-mnop3456", directory=True)
    names: list[str] = []
    real_save = torch.save

    def spy(obj, path, *args, **kwargs):  # the save's own temp dir carries this process's pid
        names.append(Path(path).parent.name)
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", spy)
    final = checkpoint.save_checkpoint(tmp_path, 3, {"step": 3}, keep=2)
    assert names and names[0].startswith(f".tmp-{os.getpid()}-")
    assert not dead2.exists() and live.exists() and old_style.exists()
    assert checkpoint.list_checkpoints(tmp_path) == [final]
    assert checkpoint.load_latest(tmp_path) == {"step": 3}


def test_demo_model_build_removes_dead_builds_only(tmp_path, dead_pid, monkeypatch):
    config = load_config(None, [f"models.cache_dir={tmp_path}", f"run.output_dir={tmp_path / 'runs'}"])
    dead = _touch(tmp_path / f".teacher.tmp-{dead_pid}-abcd1234", directory=True)
    live = _touch(tmp_path / f".student.tmp-{os.getpid()}-efgh5678", directory=True)
    built: list[str] = []

    def fake_build(role, tiny, data, out_dir: Path, progress) -> None:  # the recipe itself is tested elsewhere
        built.append(out_dir.name)
        (out_dir / "config.json").write_text("{}")

    monkeypatch.setattr(demo_teacher, "build_demo_model", fake_build)
    monkeypatch.setattr(demo_teacher, "SHIPPED_DIR", tmp_path / "no-shipped-models")  # so that it builds
    final = demo_teacher.ensure_demo_model(config, "student")
    assert (final / "config.json").exists()
    assert built and built[0].startswith(f".student.tmp-{os.getpid()}-")
    assert not dead.exists() and live.exists()
