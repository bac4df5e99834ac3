"""Reader: in-progress and damaged runs open with a warning; bad paths fail with one clear line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from opdwatch.errors import CorruptRunError, FormatVersionError, NotARunError
from opdwatch.reader import RunReadWarning, open_run
from opdwatch.recorder import Recorder, RecorderSettings


def small_run(path, steps=3, close=True):
    rec = Recorder.create(path, settings=RecorderSettings(tail_window=8, tail_threshold=0.5))
    for step in range(steps):
        rec.record_step(step, token_ids=[np.array([1, 2, 3]), np.array([4, 5])],
                        student_logp=[np.zeros(3), np.zeros(2)], teacher_logp=[np.ones(3), np.ones(2)],
                        finish_reasons=["eos", "length"], texts=["abc", "de"])
        rec.event("info", step=step, message=f"step {step}")
    if close:
        rec.close()
    return path


def test_half_written_temp_file_and_truncated_parquet_open_with_warning(tmp_path):
    path = small_run(tmp_path / "r", steps=3, close=False)
    # a writer killed mid-write leaves a hidden temp file ...
    part = path / "tokens" / "step=000003" / "rank=00000"
    part.mkdir(parents=True)
    (part / ".train.parquet.tmp-123").write_bytes(b"PAR1\x00\x00garbage")
    # ... and a copied/damaged file is truncated
    victim = path / "rollouts" / "step=000001" / "rank=00000" / "train.parquet"
    victim.write_bytes(victim.read_bytes()[:40])
    # ... and the events log ends in a torn line
    with open(path / "events" / "rank=00000.jsonl", "a") as fh:
        fh.write('{"time": 1, "kind": "inf')
    with pytest.warns(RunReadWarning):
        run = open_run(path)
    assert run.status == "running"
    assert sorted(run.rollouts().collect()["step"].unique().to_list()) == [0, 2]
    assert run.tokens().collect()["step"].unique().sort().to_list() == [0, 1, 2]
    with pytest.warns(RunReadWarning, match="torn"):
        assert run.events().height == 3


def test_reader_sees_new_steps_after_refresh(tmp_path):
    rec = Recorder.create(tmp_path / "r")
    rec.record_step(0, token_ids=[np.array([1, 2])], finish_reasons=["eos"], texts=["ab"])
    run = open_run(tmp_path / "r")
    assert run.step_numbers == [0]
    rec.record_step(1, token_ids=[np.array([1, 2])], finish_reasons=["eos"], texts=["ab"])
    assert run.refresh().step_numbers == [0, 1]
    assert len(run.parts("rollouts", min_step=1)) == 1


def test_metric_added_mid_run_is_null_before(tmp_path):
    rec = Recorder.create(tmp_path / "r")
    rec.record_step(0, token_ids=[np.array([1])], finish_reasons=["eos"], texts=["a"])
    rec.record_step(1, token_ids=[np.array([1])], finish_reasons=["eos"], texts=["a"], metrics={"loss/total": 0.5})
    steps = open_run(tmp_path / "r").steps().collect()
    assert steps["loss/total"].to_list() == [None, 0.5]


def test_empty_run_reads_as_empty_frames(tmp_path):
    Recorder.create(tmp_path / "r").close()
    run = open_run(tmp_path / "r")
    assert run.steps().collect().height == 0
    assert run.tokens().collect().height == 0 and "advantage" in run.tokens().collect_schema()
    assert run.events().height == 0


def test_not_a_run_unknown_version_corrupt_manifest(tmp_path):
    with pytest.raises(NotARunError, match="no such directory"):
        open_run(tmp_path / "missing")
    with pytest.raises(NotARunError, match="not an opdwatch run"):
        open_run(tmp_path)
    path = small_run(tmp_path / "r")
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(FormatVersionError, match="99"):
        open_run(path)
    (path / "manifest.json").write_text('{"format": "opdwatch-run", "format_ver')
    with pytest.raises(CorruptRunError, match="unreadable manifest"):
        open_run(path)


def test_import_opdwatch_pulls_no_heavy_frameworks():
    code = ("import sys, opdwatch, opdwatch.reader, opdwatch.recorder, opdwatch.cli; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'dash', 'wandb')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
