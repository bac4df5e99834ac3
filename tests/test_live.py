"""opdwatch.live: incremental ticks equal a full reload; path-safety helpers refuse what leaves the root."""

from __future__ import annotations

import os

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from opdwatch.errors import OpdwatchError
from opdwatch.live import LiveRun, check_runs_root, list_runs, order_rollouts, resolve_run
from opdwatch.reader import open_run, read_events
from opdwatch.recorder import Recorder, RecorderSettings
from opdwatch.series import length_distribution, step_series
from tests.synthetic_runs import make_run

EOS = 2
SETTINGS = RecorderSettings(tail_window=24, tail_threshold=0.6, ngram_n=3, loop_min_run=4)
WORDS = ["alpha ", "beta ", "gamma ", "delta ", "eps ", "zeta ", "eta ", "theta "]


def rollouts(rng: np.random.Generator, step: int, *, collapse_at: int, n: int = 4):
    """n rollouts: ordinary ones ending in EOS, and from ``collapse_at`` on half of them loop to the budget."""
    ids, texts, ends, reasons = [], [], [], []
    for i in range(n):
        if step >= collapse_at and i % 2 == 0:
            seq = np.resize(np.array([5, 6, 7]), 30)
            reason = "length"
        else:
            seq = np.concatenate([rng.integers(10, 18, size=int(rng.integers(4, 9))), [EOS]])
            reason = "eos"
        pieces = ["" if t == EOS else WORDS[int(t) % len(WORDS)] for t in seq]
        ids.append(seq)
        texts.append("".join(pieces))
        ends.append(np.cumsum([len(p) for p in pieces]))
        reasons.append(reason)
    s = [rng.normal(-1.0, 0.3, size=len(x)) for x in ids]
    t = [rng.normal(-1.2, 0.5, size=len(x)) for x in ids]
    return dict(token_ids=ids, student_logp=s, teacher_logp=t, finish_reasons=reasons, texts=texts,
                char_ends=ends, prompt_ids=[f"p{i // 2}" for i in range(n)], sample_index=[i % 2 for i in range(n)])


def record(rec: Recorder, step: int, rng: np.random.Generator, *, collapse_at: int = 6, val: bool = False) -> None:
    rec.record_step(step, **rollouts(rng, step, collapse_at=collapse_at),
                    correct=[True, False, None, True], metrics={"loss/total": float(step)})
    if val:
        rec.record_step(step, phase="val", **rollouts(rng, step, collapse_at=collapse_at))


def new_run(path, steps: range, rng: np.random.Generator) -> Recorder:
    rec = Recorder.create(path, config={"name": "t"}, tokenizer_info={"eos_token_ids": [EOS]}, settings=SETTINGS)
    for step in steps:
        record(rec, step, rng, val=step % 3 == 0)
    return rec


def assert_matches_full_reload(live: LiveRun) -> None:
    run = open_run(live.path)
    assert_frame_equal(live.series(), step_series(run))
    assert_frame_equal(live.lengths(), length_distribution(run))
    assert_frame_equal(live.steps().collect(), run.steps().collect())
    assert_frame_equal(live.events(), read_events(live.path))
    assert live.manifest == run.manifest


def test_incremental_ticks_equal_a_full_reload(tmp_path):
    rng = np.random.default_rng(0)
    rec = new_run(tmp_path / "r", range(3), rng)
    live = LiveRun(tmp_path / "r")
    assert_matches_full_reload(live)  # cold load
    for step in range(3, 12):
        record(rec, step, rng, val=step % 3 == 0)
        if step == 7:
            rec.event("alarm", step=step, message="truncation rising", signal="rollout/truncation_rate")
        result = live.tick()
        assert result.new_steps == 1 and result.changed and not result.reloaded
        assert_matches_full_reload(live)
    assert live.series()["step"].to_list() == list(range(12))
    assert live.last_step == 11


def test_tick_with_nothing_new_changes_nothing(tmp_path):
    rec = new_run(tmp_path / "r", range(4), np.random.default_rng(1))
    live = LiveRun(tmp_path / "r")
    live.series()
    version = live.version
    result = live.tick()
    assert (result.new_steps, result.changed, live.version) == (0, False, version)
    rec.close()
    assert live.tick().changed  # the manifest's status changed
    assert live.status == "finished"


def test_late_metrics_and_several_steps_per_tick(tmp_path):
    rng = np.random.default_rng(2)
    rec = new_run(tmp_path / "r", range(2), rng)
    live = LiveRun(tmp_path / "r")
    live.series()
    for step in range(2, 7):  # five steps between two ticks
        record(rec, step, rng)
    rec.log_metrics(5, "train", {"loss/kl": 0.5})  # a trainer adding metrics to a step already written
    rec.log_metrics(5, "val", {"rollout/accuracy": 0.25})
    assert live.tick().new_steps == 5
    assert_matches_full_reload(live)
    rec.log_metrics(6, "train", {"optim/grad_norm": 3.0})  # rewrites the newest step file only
    assert live.tick().new_steps == 0
    assert_matches_full_reload(live)
    assert live.series().filter(pl.col("step") == 6)["optim/grad_norm"].to_list() == [3.0]


def test_torn_event_line_waits_for_the_next_tick(tmp_path):
    rec = new_run(tmp_path / "r", range(2), np.random.default_rng(3))
    live = LiveRun(tmp_path / "r")
    path = tmp_path / "r" / "events" / "rank=00000.jsonl"
    rec.event("warning", step=1, message="first")
    with open(path, "a", encoding="utf-8") as fh:
        fh.write('{"time": 1e12, "step": 1, "kind": "alarm", "mess')  # a writer mid-line
    live.tick()
    assert live.events()["message"].to_list() == ["first"]
    with open(path, "a", encoding="utf-8") as fh:
        fh.write('age": "second"}\n')
    live.tick()
    assert live.events()["message"].to_list() == ["first", "second"]


def test_resume_reloads_from_scratch(tmp_path):
    rng = np.random.default_rng(4)
    rec = new_run(tmp_path / "r", range(8), rng)
    rec.close("failed")
    live = LiveRun(tmp_path / "r")
    live.series()
    rec = Recorder.create(tmp_path / "r", resume_from_step=4, settings=SETTINGS,
                          tokenizer_info={"eos_token_ids": [EOS]})
    record(rec, 5, rng)
    result = live.tick()
    assert result.reloaded
    assert live.series()["step"].to_list() == [0, 1, 2, 3, 4, 5]
    assert_matches_full_reload(live)


def test_drill_down_reads_one_step(tmp_path):
    rec = new_run(tmp_path / "r", range(8), np.random.default_rng(5))
    rec.close()
    live = LiveRun(tmp_path / "r")
    assert live.rollout_steps() == list(range(8))
    ro = live.step_rollouts(7, phase="train")
    assert ro["num_tokens"].to_list() == sorted(ro["num_tokens"].to_list(), reverse=True)  # longest first
    assert ro["truncated"][0]
    adv = live.step_rollouts(7, phase="train", order="advantage")["advantage_mean"].to_list()
    assert adv == sorted(adv)
    first = ro.row(0, named=True)
    tokens = live.rollout_tokens(7, rank=first["rank"], phase="train", rollout=first["rollout"])
    assert tokens.height == first["num_tokens"]
    assert "".join(tokens["text"].to_list()) == first["text"]  # char_end offsets cut the text exactly
    history = live.prompt_history(first["prompt_id"], phase="train")
    assert sorted(set(history["step"].to_list())) == list(range(8))
    assert set(history["prompt_id"].to_list()) == {first["prompt_id"]}


def test_order_rollouts_puts_nulls_last_and_rejects_unknown_orders():
    frame = pl.DataFrame({"num_tokens": [3, 9, 5], "seq_rep_n": [0.0, 0.1, 0.2],
                          "advantage_mean": [None, -0.5, 0.2], "repetitive": [False, True, False],
                          "repetitive_token_share": [0.0, 0.8, None]})
    assert order_rollouts(frame, "length")["num_tokens"].to_list() == [9, 5, 3]
    assert order_rollouts(frame, "advantage")["num_tokens"].to_list() == [9, 5, 3]
    assert order_rollouts(frame, "repetition")["num_tokens"].to_list() == [9, 3, 5]
    with pytest.raises(OpdwatchError, match="unknown rollout order"):
        order_rollouts(frame, "random")


# ------------------------------------------------------------------------------------------ paths
@pytest.fixture()
def root(tmp_path):
    base = tmp_path / "runs"
    new_run(base / "a", range(1), np.random.default_rng(0)).close()
    new_run(base / "group" / "b", range(1), np.random.default_rng(0)).close()
    new_run(tmp_path / "outside", range(1), np.random.default_rng(0)).close()
    (base / "empty").mkdir()
    return base


def test_resolve_run_accepts_runs_under_the_root(root):
    assert resolve_run(root, "a") == (root / "a").resolve()
    assert resolve_run(root, "group/b") == (root / "group" / "b").resolve()


@pytest.mark.parametrize("name", ["../outside", "/etc", "a/../../outside", "", "empty", "missing",
                                  "a\x00", "..\\outside", "group"])
def test_resolve_run_refuses_anything_else(root, name):
    with pytest.raises(OpdwatchError):
        resolve_run(root, name)


def test_resolve_run_refuses_symlinks_that_escape(root, tmp_path):
    os.symlink(tmp_path / "outside", root / "link_out")
    os.symlink(root / "a", root / "link_in")
    with pytest.raises(OpdwatchError, match="not a run under the runs root"):
        resolve_run(root, "link_out")
    assert resolve_run(root, "link_in") == (root / "a").resolve()
    # a run directory whose manifest is a link to another run's, outside the root
    (root / "fake").mkdir()
    os.symlink(tmp_path / "outside" / "manifest.json", root / "fake" / "manifest.json")
    with pytest.raises(OpdwatchError):
        resolve_run(root, "fake")


def test_list_runs_stays_inside_the_root(root, tmp_path):
    os.symlink(tmp_path / "outside", root / "link_out")
    assert list_runs(root) == ["a", "group/b"]


def test_check_runs_root(tmp_path):
    assert check_runs_root(tmp_path) == tmp_path.resolve()
    with pytest.raises(OpdwatchError, match="no such directory"):
        check_runs_root(tmp_path / "nope")
    (tmp_path / "f").write_text("x")
    with pytest.raises(OpdwatchError, match="not a directory"):
        check_runs_root(tmp_path / "f")


def test_a_live_run_is_a_run_source_that_analysis_reads_like_a_run(tmp_path):
    # LiveRun implements RunSource itself: the analysis functions take it and give what they give on open_run.
    from opdwatch.series import length_distribution, step_series

    path = make_run(tmp_path / "r", steps=6, collapse_at=3)
    live, run = LiveRun(path), open_run(path)
    assert_frame_equal(step_series(live), step_series(run))
    assert_frame_equal(length_distribution(live), length_distribution(run))
    for table in ("rollouts", "tokens"):
        assert_frame_equal(getattr(live, table)(min_step=2).collect(), getattr(run, table)(min_step=2).collect())
    assert_frame_equal(live.steps("train").collect(), run.steps("train").collect())
