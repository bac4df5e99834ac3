"""Resume equals the uninterrupted run; a non-finite log-prob skips the update and spares the weights."""

from __future__ import annotations

import polars as pl
import pytest
import torch

import opdwatch.trainer.loop.loop as loop
import opdwatch.trainer.loop.step as step
from opdwatch import open_run
from opdwatch.errors import OpdwatchError
from opdwatch.trainer.data.models import load_causal_lm
from opdwatch.trainer.loop.checkpoint import list_checkpoints
from opdwatch.trainer.loop.components import model_path


def _train_rows(run_dir) -> pl.DataFrame:
    steps = open_run(run_dir).steps
    steps = steps() if callable(steps) else steps
    steps = steps.collect() if isinstance(steps, pl.LazyFrame) else steps
    keep = [c for c in steps.columns if not c.startswith("time") and c not in ("rank",)]
    return steps.select(keep).sort("phase", "step")


class Crash(RuntimeError):
    pass


def test_resume_equals_uninterrupted(tiny_config) -> None:
    full = tiny_config("opd.steps=4", "checkpoint.every=2", "run.name=full")
    loop.train(full)
    broken = tiny_config("opd.steps=4", "checkpoint.every=2", "run.name=resumed")

    def crash_at_3(step, summary, controller) -> None:
        if step == 3:
            raise Crash("simulated crash after step 3 was recorded")

    with pytest.raises(Crash):
        loop.train(broken, on_step=crash_at_3)
    loop.train(broken, resume=True)
    a, b = _train_rows(full.run_dir), _train_rows(broken.run_dir)
    assert b.filter(pl.col("phase") == "train")["step"].to_list() == [
        1,
        2,
        3,
        4,
    ]  # no duplicated/missing steps
    assert a.columns == b.columns
    for col in a.columns:
        if a[col].dtype.is_float():
            assert a[col].to_list() == pytest.approx(b[col].to_list(), abs=1e-6, nan_ok=True), col
        else:
            assert a[col].to_list() == b[col].to_list(), col
    events = open_run(broken.run_dir).events
    kinds = (events() if callable(events) else events)["kind"].to_list()
    assert "resume" in kinds


def _events(run_dir) -> list[tuple]:
    events = open_run(run_dir).events
    events = events() if callable(events) else events
    return list(zip(events["kind"].to_list(), events["step"].to_list(), events["message"].to_list(), strict=True))


def test_resumed_watch_continues_the_detector_and_policy_of_the_interrupted_run(tiny_config, tmp_path) -> None:
    # The 16-token budget makes the tiny student truncate: the guard alarms at step 1 and the policy raises,
    # then the cooldown (5 steps) holds until step 6. A watch that started afresh after the resume from
    # step 3 would alarm and raise again at step 4 (detector back in warm-up, cooldown forgotten).
    watch = ["opd.steps=6", "checkpoint.every=3", "val.every=0", "opd.beta=0.0", "opd.alpha=0.0", "run.name=w",
             "watch.mode=act", "watch.detector.warmup_steps=2", "watch.detector.warn_truncation=0.05",
             "watch.detector.alarm_truncation=0.1", "watch.detector.guard_steps=1"]
    full = tiny_config(*watch, f"run.output_dir={tmp_path / 'full'}")  # same run name: same alert titles
    loop.train(full)
    broken = tiny_config(*watch, f"run.output_dir={tmp_path / 'resumed'}")

    def crash_at_4(step, summary, controller) -> None:
        if step == 4:
            raise Crash("simulated crash after step 4 was recorded")

    with pytest.raises(Crash):
        loop.train(broken, on_step=crash_at_4)
    saved = torch.load(list_checkpoints(broken.run_dir)[-1] / "state.pt", weights_only=False)
    assert saved["step"] == 3 and saved["watch"]["watcher"]["detector"]["steps_seen"] == 3
    loop.train(broken, resume=True)

    expected, got = _events(full.run_dir), [e for e in _events(broken.run_dir) if e[0] != "resume"]
    assert got == expected
    assert [e[:2] for e in expected if e[0] in ("alarm", "intervention")] == [
        ("alarm", 1), ("intervention", 1), ("intervention", 6)]
    a, b = _train_rows(full.run_dir), _train_rows(broken.run_dir)
    assert a["control/beta"].to_list() == b["control/beta"].to_list()
    last = [torch.load(list_checkpoints(r)[-1] / "state.pt", weights_only=False)["watch"]
            for r in (full.run_dir, broken.run_dir)]
    assert repr(last[0]) == repr(last[1])  # baselines, statistics, counters and policy, float for float


def test_nonfinite_logp_skips_update(tiny_config, monkeypatch) -> None:
    config = tiny_config("opd.steps=2", "checkpoint.every=1", "checkpoint.keep=5", "run.name=nan")
    real_score = step.score_sequences
    calls = []

    def poisoned_score(*args, **kwargs):
        scores = real_score(*args, **kwargs)
        calls.append(1)
        if len(calls) == 1:  # step 1 only: a NaN teacher log-prob in every minibatch
            scores.teacher_logp_BT[:, 0] = float("nan")
            scores.advantage_BT[:, 0] = float("nan")
        return scores

    monkeypatch.setattr(step, "score_sequences", poisoned_score)
    run_dir = loop.train(config)
    initial = load_causal_lm(model_path(config, "student"), trainable=False).state_dict()
    step1, step2 = (
        torch.load(p / "state.pt", weights_only=False)["student"] for p in list_checkpoints(run_dir)
    )
    assert all(torch.equal(initial[k], step1[k]) for k in initial)  # the NaN never reached the weights
    assert not all(torch.equal(step1[k], step2[k]) for k in initial)  # and the run went on
    rows = _train_rows(run_dir).filter(pl.col("phase") == "train")
    assert rows["update/skipped_nonfinite"].to_list() == [2.0, 0.0]  # both minibatches of step 1
    events = open_run(run_dir).events
    events = events() if callable(events) else events
    assert events.filter(pl.col("kind") == "skip_update")["step"].to_list() == [1]


def _assert_same_steps(a: pl.DataFrame, b: pl.DataFrame) -> None:
    assert a.columns == b.columns
    for col in a.columns:
        if a[col].dtype.is_float():
            assert a[col].to_list() == pytest.approx(b[col].to_list(), abs=1e-6, nan_ok=True), col
        else:
            assert a[col].to_list() == b[col].to_list(), col


def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_it_again(tiny_config) -> None:
    # checkpoint.every=0: the only checkpoint is the last step's, so a crash at step 2 leaves none
    common = ("opd.steps=3", "checkpoint.every=0", "val.every=2")
    fresh = tiny_config(*common, "run.name=fresh")
    loop.train(fresh)
    killed = tiny_config(*common, "run.name=killed")

    def crash_at_2(step, summary, controller) -> None:
        if step == 2:
            raise Crash("simulated kill before the first checkpoint")

    with pytest.raises(Crash):
        loop.train(killed, on_step=crash_at_2)
    assert list_checkpoints(killed.run_dir) == [] and (killed.run_dir / "manifest.json").exists()
    with pytest.warns(UserWarning, match="no checkpoint to resume from.*starting it again from scratch"):
        loop.train(killed, resume=True)
    _assert_same_steps(_train_rows(fresh.run_dir), _train_rows(killed.run_dir))
    kinds = [e[0] for e in _events(killed.run_dir)]
    assert "error" not in kinds and "resume" not in kinds  # what the killed attempt recorded is gone
    assert open_run(killed.run_dir).status == "finished"


def test_overwrite_replaces_a_recorded_run(tiny_config) -> None:
    fresh = tiny_config("opd.steps=2", "val.every=0", "run.name=fresh")
    loop.train(fresh)
    again = tiny_config("opd.steps=2", "val.every=0", "run.name=again", "opd.lr=1e-2")
    loop.train(again)  # a different run recorded under the name ...
    with pytest.raises(OpdwatchError, match="--overwrite replaces it"):
        loop.train(tiny_config("opd.steps=2", "val.every=0", "run.name=again"))
    loop.train(tiny_config("opd.steps=2", "val.every=0", "run.name=again"), overwrite=True)  # ... is replaced
    _assert_same_steps(_train_rows(fresh.run_dir), _train_rows(again.run_dir))
    assert open_run(again.run_dir).manifest["config"]["opd"]["lr"] == fresh.opd.lr
    with pytest.raises(OpdwatchError, match="exclude each other"):
        loop.train(again, resume=True, overwrite=True)


def test_both_refusals_say_the_way_forward(tiny_config) -> None:
    config = tiny_config("run.name=nothing")
    with pytest.raises(OpdwatchError, match="no run is recorded here to resume: start it without --resume"):
        loop.train(config, resume=True)
    assert not config.run_dir.exists()
