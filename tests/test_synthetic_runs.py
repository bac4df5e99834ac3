"""The shared synthetic-run helper writes real runs with the story it promises."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from opdwatch.reader import open_run
from tests.synthetic_runs import make_run, thinned


def test_collapse_is_injected_where_asked(tmp_path: Path) -> None:
    run = open_run(make_run(tmp_path / "opd", steps=12, collapse_at=7, rollouts=16))
    assert run.status == "finished" and run.step_numbers == list(range(1, 13))
    rollouts = run.rollouts().filter(pl.col("phase") == "train").collect()
    rate = rollouts.group_by("step").agg(pl.col("truncated").mean()).sort("step")
    before = rate.filter(pl.col("step") < 7)["truncated"].max()
    after = rate.filter(pl.col("step") >= 7)["truncated"].min()
    assert before < 0.3 < after
    assert set(run.events()["kind"].to_list()) == {"warning", "alarm"}
    assert run.steps("val").collect()["step"].to_list() == [5, 10]


def test_options(tmp_path: Path) -> None:
    live = open_run(make_run(tmp_path / "live", steps=3, close=False, with_events=False))
    assert live.status == "running" and live.events().height == 0
    thin = open_run(make_run(tmp_path / "thin", steps=4, settings=thinned(every_k=2)))
    assert {p.step for p in thin.parts("tokens")} == {2, 4}
