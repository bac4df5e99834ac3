"""A 3-step tiny run writes every table of the run format with consistent values."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from opdwatch import open_run
from opdwatch.trainer.loop.loop import train

REQUIRED = [
    "time/rollout",
    "time/score",
    "time/update",
    "time/record",  # inside Recorder.record_step
    "time/record_total",  # the loop's whole recording phase (decode, offsets, record_step, all-reduce)
    "loss/total",
    "loss/opd",
    "loss/kl",
    "loss/sft",
    "control/beta",
    "control/alpha",
    "optim/grad_norm",
    "optim/lr",
    "update/skipped_nonfinite",
    "rollout/truncation_rate",
    "rollout/repetition_rate",
]


@pytest.fixture
def run(tiny_config):
    config = tiny_config("opd.steps=3", "run.name=tiny")
    return config, open_run(train(config))


def _frame(x) -> pl.DataFrame:
    x = x() if callable(x) else x
    return x.collect() if isinstance(x, pl.LazyFrame) else x


def test_steps_table(run) -> None:
    config, r = run
    steps = _frame(r.steps)
    train_rows = steps.filter(pl.col("phase") == "train").sort("step")
    assert train_rows["step"].to_list() == [1, 2, 3]
    assert steps.filter(pl.col("phase") == "val")["step"].sort().to_list() == [0, 2, 3]
    for key in REQUIRED:
        assert key in steps.columns, key
        assert train_rows[key].null_count() == 0, key
    assert train_rows["control/beta"].to_list() == [0.1] * 3
    assert train_rows["update/skipped_nonfinite"].to_list() == [0.0] * 3
    total = train_rows["loss/opd"] + 0.1 * train_rows["loss/kl"] + 0.5 * train_rows["loss/sft"]
    assert np.allclose(total.to_numpy(), train_rows["loss/total"].to_numpy(), atol=1e-5)


def test_rollouts_and_tokens_are_consistent(run) -> None:
    config, r = run
    rollouts = _frame(r.rollouts).filter(pl.col("phase") == "train")
    tokens = _frame(r.tokens)
    assert rollouts.height == 3 * 4 * 2
    budget = config.rollout.max_new_tokens
    eos = 1
    for row in rollouts.iter_rows(named=True):
        toks = tokens.filter((pl.col("step") == row["step"]) & (pl.col("rollout") == row["rollout"])).sort(
            "position"
        )
        ids = toks["token_id"].to_list()
        assert len(ids) == row["num_tokens"]
        ran_out = len(ids) == budget and eos not in ids
        assert row["truncated"] == ran_out == (row["finish_reason"] == "length")
        if not ran_out:
            assert ids[-1] == eos and eos not in ids[:-1]
    adv = tokens["advantage"].to_numpy()
    assert np.allclose(adv, tokens["teacher_logp"].to_numpy() - tokens["student_logp"].to_numpy(), atol=1e-5)
    assert np.isfinite(tokens["ref_logp"].to_numpy()).all()


def test_manifest_and_events(run) -> None:
    config, r = run
    manifest = r.manifest() if callable(r.manifest) else r.manifest
    assert manifest["status"] == "finished"
    assert manifest["config"]["opd"]["beta"] == 0.1
    events = _frame(r.events)
    assert "checkpoint" in events["kind"].to_list()
    assert (config.run_dir / "checkpoints" / "step-000003" / "state.pt").exists()
