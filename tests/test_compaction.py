"""Compaction (run format 1.1): every row kept once, idempotent, safe under kill -9, while a run is written
and followed by the live reader, and undone by a resume."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from opdwatch.cli import main as cli
from opdwatch.compaction import compact
from opdwatch.live import LiveRun
from opdwatch.reader import open_run
from opdwatch.recorder import Recorder, RecorderSettings
from opdwatch.segments import COMPACTED_DIR, list_segments
from opdwatch.series import step_series
from tests.synthetic_runs import make_run

SETTINGS = RecorderSettings(tail_window=32, tail_threshold=0.5, ngram_n=4, loop_min_run=8)


def snapshot(run_dir: Path) -> dict[str, pl.DataFrame]:
    """What every reader shows of a run: the series, the step table and every rollout and token row."""
    run = open_run(run_dir)
    keys = ["step", "rank", "phase", "rollout"]
    return {"series": step_series(run), "steps": run.steps().collect(),
            "rollouts": run.rollouts().collect().sort(keys),
            "tokens": run.tokens().collect().sort(["step", "rank", "rollout", "position"])}


def assert_same(a: dict[str, pl.DataFrame], b: dict[str, pl.DataFrame], *, drop: tuple[str, ...] = ()) -> None:
    """Every row exactly the same (but columns named ``.../D`` for D in ``drop``); series floats to 1e-12
    (polars' group-by sums depend on how rows are chunked: a float mean can move by an ulp in a new file)."""
    for name in a:
        x, y = (f.drop([c for c in f.columns if c.split("/")[-1] in drop]) for f in (a[name], b[name]))
        if name == "series":
            assert_frame_equal(x, y, rel_tol=1e-12, abs_tol=0.0)
        else:
            assert x.equals(y), f"{name} differs"


def parquet_files(run_dir: Path) -> list[Path]:
    return sorted(p for p in run_dir.rglob("*.parquet") if not p.name.startswith("."))


def write_step(rec: Recorder, step: int, rng: np.random.Generator, *, chunks: int = 1) -> None:
    """One step of 6 rollouts (a third of them looping to the budget), in ``chunks`` record_step calls."""
    for _ in range(chunks):
        ids, texts, reasons = [], [], []
        for i in range(6):
            n = int(rng.integers(20, 60))
            if i % 3 == 0:
                seq, reason = np.resize(rng.integers(5, 30, size=4), 64), "length"
            else:
                seq, reason = np.concatenate([rng.integers(5, 30, size=n - 1), [1]]), "eos"
            ids.append(seq)
            texts.append("".join(chr(97 + int(t) % 26) for t in seq))
            reasons.append(reason)
        rec.record_step(step, token_ids=ids, texts=texts, finish_reasons=reasons,
                        student_logp=[rng.normal(-1, 0.3, len(x)) for x in ids],
                        teacher_logp=[rng.normal(-1.2, 0.5, len(x)) for x in ids],
                        metrics={"loss/total": float(step)})


def test_compaction_keeps_every_row_once_and_is_idempotent(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path / "run", steps=12, collapse_at=7, val_every=4)
    before = snapshot(run_dir)
    files = len(parquet_files(run_dir))
    result = compact(run_dir)
    assert result.steps == 12 and result.files == files and len(result.segments) == 1
    after = parquet_files(run_dir)
    assert all(COMPACTED_DIR in p.parts for p in after)  # the small files are gone
    assert_same(before, snapshot(run_dir))
    assert compact(run_dir).steps == 0  # idempotent: nothing left to do, nothing changed
    assert parquet_files(run_dir) == after
    assert_same(before, snapshot(run_dir))


def test_segments_are_cut_by_size_and_at_odd_steps(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path / "run", steps=10, val_every=0)
    odd = run_dir / "steps" / "step=000005" / "rank=00000"
    shutil.copy(odd / "train.parquet", odd / "train-1.parquet")  # step 5 recorded twice
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        before = snapshot(run_dir)
    from opdwatch.compaction import CompactionSettings

    result = compact(run_dir, settings=CompactionSettings(max_token_rows=3 * 16 * 40))
    assert result.left == (5,)
    spans = [(s.first_step, s.last_step) for s in list_segments(run_dir)]
    assert len(spans) >= 3 and all(not (a <= 5 <= b) for a, b in spans)
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        assert_same(before, snapshot(run_dir))
    assert [str(w.message) for w in again] == [str(w.message) for w in said]  # the same warning, same file


def test_running_run_compacts_final_steps_while_the_live_reader_follows(tmp_path: Path) -> None:
    run_dir, twin_dir = tmp_path / "run", tmp_path / "twin"
    recs = [Recorder.create(d, tokenizer_info={"eos_token_ids": [1]}, settings=SETTINGS) for d in (run_dir, twin_dir)]
    rngs = [np.random.default_rng(3), np.random.default_rng(3)]
    for step in range(8):
        for rec, rng in zip(recs, rngs, strict=True):
            write_step(rec, step, rng, chunks=1 + step % 2)
    live = LiveRun(run_dir)
    live.series()
    result = compact(run_dir)  # running: steps <= 7 - 3 are final
    assert [(s.first_step, s.last_step) for s in list_segments(run_dir)] == [(0, 4)] and result.steps == 5
    # the live reader still shows the replaced steps until its next tick, and reads them after it
    assert live.step_rollouts(3).height == 12  # two record_step chunks of 6
    live.tick()
    for step in range(8, 11):
        for rec, rng in zip(recs, rngs, strict=True):
            write_step(rec, step, rng)
        compact(run_dir)
        live.tick()
    drop = ("time", "record")
    assert_same({"series": live.series()}, {"series": step_series(open_run(twin_dir))}, drop=drop)
    assert_same(snapshot(twin_dir), snapshot(run_dir), drop=drop)
    row = live.step_rollouts(3).row(0, named=True)
    tokens = live.rollout_tokens(3, rank=0, phase="train", rollout=row["rollout"])
    assert tokens.height == row["num_tokens"]
    for rec in recs:
        rec.close()
    compact(run_dir)
    assert list_segments(run_dir)[-1].last_step == 10  # finished: every step is final
    assert_same(snapshot(twin_dir), snapshot(run_dir), drop=drop)


def test_resume_uncompacts_the_steps_it_redoes(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path / "run", steps=10, val_every=3)
    twin = make_run(tmp_path / "twin", steps=10, val_every=3)
    compact(run_dir)
    for d in (run_dir, twin):
        Recorder.create(d, settings=SETTINGS, resume_from_step=6).close()
    assert all(s.last_step <= 6 for s in list_segments(run_dir))
    assert open_run(run_dir).step_numbers == list(range(1, 7))
    assert_same(snapshot(twin), snapshot(run_dir), drop=("time", "record"))


def test_kill_9_at_random_instants_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    """Really killed compaction processes (benchmarks/compaction.py --kills 20 kills `opdwatch compact` at 20 random
    instants): killed while building, just after the commit, and at a random instant. Each leaves a run that
    reads back the same; a later pass finishes the job."""
    ref_dir = make_run(tmp_path / "ref", steps=12, rollouts=12, val_every=5)
    reference = snapshot(ref_dir)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    rng = random.Random(17)

    def building(base: Path) -> bool:
        return any(p.name.startswith(".steps=") for p in base.iterdir()) if base.is_dir() else False

    def committed(base: Path) -> bool:
        return bool(list_segments(base.parent)) if base.is_dir() else False

    for i, when in enumerate((building, committed, None)):
        run_dir = shutil.copytree(ref_dir, tmp_path / f"k{i}")
        # the library call alone (the CLI's imports would triple the start-up; the CLI is tested below)
        proc = subprocess.Popen([sys.executable, "-c", "import sys; from opdwatch.compaction import compact; "
                                 "compact(sys.argv[1])", str(run_dir)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        if when is None:
            time.sleep(rng.uniform(0.2, 2.0))
        else:
            while not when(run_dir / COMPACTED_DIR) and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.001)
            time.sleep(rng.uniform(0.0, 0.02))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert_same(reference, snapshot(run_dir))
        compact(run_dir)
        assert_same(reference, snapshot(run_dir))
        assert not any(p.name.startswith(".") for p in (run_dir / COMPACTED_DIR).iterdir() if p.name != ".lock")


def test_cli_compact(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = make_run(tmp_path / "run", steps=4, val_every=0)
    assert cli(["compact", str(run_dir)]) == 0
    assert "4 steps compacted into 1 segment (12 files replaced)" in capsys.readouterr().out
    assert cli(["compact", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip() == f"opdwatch: error: {tmp_path / 'nope'}: no such directory"


def test_recorder_compacts_in_the_background_and_on_close(tmp_path: Path) -> None:
    settings = RecorderSettings(tail_window=32, tail_threshold=0.5, ngram_n=4, loop_min_run=8,
                                compact_every_steps=5, compact_on_close=True)
    rec = Recorder.create(tmp_path / "run", tokenizer_info={"eos_token_ids": [1]}, settings=settings)
    twin = Recorder.create(tmp_path / "twin", tokenizer_info={"eos_token_ids": [1]}, settings=SETTINGS)
    rngs = [np.random.default_rng(5), np.random.default_rng(5)]
    live = None
    for step in range(16):
        for r, rng in zip((rec, twin), rngs, strict=True):
            write_step(r, step, rng)
        if step == 3:
            live = LiveRun(tmp_path / "run")
        elif live is not None:
            live.tick()
    rec._compactor._thread.join()  # the last background pass (started at step 15)
    assert list_segments(tmp_path / "run")  # compacted while running, before close
    rec.close()
    twin.close()
    assert [(s.first_step, s.last_step) for s in list_segments(tmp_path / "run")][-1][1] == 15
    assert all(COMPACTED_DIR in p.parts for p in parquet_files(tmp_path / "run"))
    assert_same(snapshot(tmp_path / "twin"), snapshot(tmp_path / "run"), drop=("time", "record"))
    live.tick()
    assert_same({"series": live.series()}, {"series": step_series(open_run(tmp_path / "twin"))},
                drop=("time", "record"))


def test_killed_after_the_commit_the_segment_hides_the_old_files(tmp_path: Path) -> None:
    """The state a kill between the commit and the deletes leaves: segment and small files both on disk."""
    original = make_run(tmp_path / "run", steps=8, val_every=4)
    reference = snapshot(original)
    run_dir = shutil.copytree(original, tmp_path / "killed")
    compact(run_dir)
    for table in ("steps", "rollouts", "tokens"):  # the small files back, as if never deleted
        shutil.copytree(original / table, run_dir / table, dirs_exist_ok=True)
    live = LiveRun(run_dir)
    assert_same(reference, snapshot(run_dir))  # read once, from the segment
    assert_same({"series": reference["series"]}, {"series": live.series()})
    result = compact(run_dir)
    assert result.removed == len(parquet_files(original)) and result.steps == 0
    assert all(COMPACTED_DIR in p.parts for p in parquet_files(run_dir))
    assert_same(reference, snapshot(run_dir))
