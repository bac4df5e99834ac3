"""step_series against a brute-force recomputation from the token and rollout tables (plain loops)."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from opdwatch import aggregates
from opdwatch.reader import open_run
from opdwatch.recorder import Recorder
from opdwatch.series import ROLLOUT_SERIES, TOKEN_SERIES, length_distribution, step_series, token_source_note
from tests.synthetic_runs import SETTINGS, _batch, make_run, thinned


def _rows(run, table: str, phase: str) -> list[dict]:
    out = []
    for part in run.parts(table):
        if part.phase == phase:
            out.extend(pq.read_table(part.path).to_pylist())
    return out


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else None


def brute_tokens(run) -> dict[int, dict[str, float | None]]:
    by_step: dict[int, list[dict]] = defaultdict(list)
    for row in _rows(run, "tokens", "train"):
        by_step[row["step"]].append(row)
    out = {}
    for step, rows in by_step.items():
        masked = [r for r in rows if r["loss_mask"]]
        rep = [r for r in masked if r["rep_tail"] or r["rep_ngram"]]
        reg = [r for r in masked if not (r["rep_tail"] or r["rep_ngram"])]
        out[step] = {
            "token/count": float(len(masked)),
            "token/student_logp_mean": _mean([r["student_logp"] for r in masked]),
            "token/teacher_logp_mean": _mean([r["teacher_logp"] for r in masked]),
            "token/ref_logp_mean": _mean([r["ref_logp"] for r in masked]),
            "token/advantage_mean": _mean([r["advantage"] for r in masked]),
            "token/adv_repetitive_mean": _mean([r["advantage"] for r in rep]),
            "token/adv_regular_mean": _mean([r["advantage"] for r in reg]),
            "token/adv_tail_mean": _mean([r["advantage"] for r in masked if r["rep_tail"]]),
            "token/repetitive_share": _mean([float(r["rep_tail"] or r["rep_ngram"]) for r in masked]),
            "token/ngram_repeat_share": _mean([float(r["rep_ngram"]) for r in masked]),
            "token/tail_share": _mean([float(r["rep_tail"]) for r in masked]),
            "token/eos_advantage_mean": _mean([r["advantage"] for r in rows if r["eos"]]),
        }
    return out


def _cv(xs: list[float]) -> float:
    mean = sum(xs) / len(xs)
    return (sum((x - mean) ** 2 for x in xs) / len(xs)) ** 0.5 / mean


def brute_rollouts(run, phase: str) -> dict[int, dict[str, float | None]]:
    by_step: dict[int, list[dict]] = defaultdict(list)
    for row in _rows(run, "rollouts", phase):
        by_step[row["step"]].append(row)
    out = {}
    for step, rows in by_step.items():
        out[step] = {
            "rollout/count": float(len(rows)),
            "rollout/truncation_rate": _mean([float(r["truncated"]) for r in rows]),
            "rollout/repetition_rate": _mean([float(r["repetitive"]) for r in rows]),
            "rollout/loop_rate": _mean([float(r["loop_onset"] is not None) for r in rows]),
            "rollout/mean_length": _mean([float(r["num_tokens"]) for r in rows]),
            "rollout/max_length": float(max(r["num_tokens"] for r in rows)),
            "rollout/length_cv": _cv([float(r["num_tokens"]) for r in rows]),
            "rollout/zlib_tail_ratio_mean": _mean([r["zlib_tail_ratio"] for r in rows]),
            "rollout/accuracy": _mean([float(r["correct"]) for r in rows if r["correct"] is not None]),
        }
    return out


def assert_close(actual: float | None, expected: float | None, what: str) -> None:
    if expected is None:
        assert actual is None, what
    else:
        assert actual is not None and actual == pytest.approx(expected, rel=1e-9, abs=1e-12), what


@pytest.fixture(scope="module")
def collapsing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("series") / "opd", steps=24, collapse_at=12, seed=3)


def test_every_series_equals_brute_force(collapsing: Path) -> None:
    run = open_run(collapsing)
    frame = step_series(run)
    tokens, train, val = brute_tokens(run), brute_rollouts(run, "train"), brute_rollouts(run, "val")
    assert frame["step"].to_list() == sorted(set(train) | set(val))
    assert set(frame["token_source"].to_list()) == {"tokens"}
    rows = {r["step"]: r for r in frame.iter_rows(named=True)}
    for step, expected in tokens.items():
        for key in TOKEN_SERIES:
            assert_close(rows[step][key], expected[key], f"step {step} {key}")
    for step, expected in train.items():
        for key in ROLLOUT_SERIES:
            assert_close(rows[step][key], expected[key], f"step {step} {key}")
    assert val, "the synthetic run has validation steps"
    for step, expected in val.items():
        for key in ROLLOUT_SERIES:
            assert_close(rows[step][f"val/{key}"], expected[key], f"step {step} val/{key}")


def test_trainer_metrics_and_recorder_metrics_are_carried(collapsing: Path) -> None:
    run = open_run(collapsing)
    frame = step_series(run)
    metrics = run.steps("train").collect()
    for key in ("loss/total", "loss/opd", "control/beta", "time/rollout", "time/record"):
        assert frame[key].to_list() == metrics[key].to_list()
    # Token aggregates agree with the recorder's own step metrics (computed before any thinning).
    for key in ("token/adv_repetitive_mean", "token/repetitive_share", "token/eos_advantage_mean"):
        np.testing.assert_allclose(frame[key].to_numpy(), metrics[key].to_numpy(), rtol=1e-9)


def test_thinned_tokens_fall_back_to_step_metrics(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path / "thin", steps=8, settings=thinned(every_k=2, fraction=0.5), collapse_at=4)
    run = open_run(run_dir)
    frame = step_series(run)
    assert set(frame["token_source"].to_list()) == {"step_metrics"}
    metrics = run.steps("train").collect()
    for key in TOKEN_SERIES:
        if key in metrics.columns:
            np.testing.assert_allclose(frame[key].to_numpy(), metrics[key].to_numpy(), rtol=1e-12)
    assert "recorder step metrics" in token_source_note(frame)


def test_a_step_with_missing_token_rows_falls_back(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path / "gap", steps=6, val_every=0)
    next(p for p in open_run(run_dir).parts("tokens") if p.step == 3).path.unlink()
    frame = step_series(open_run(run_dir))
    sources = dict(zip(frame["step"].to_list(), frame["token_source"].to_list(), strict=True))
    assert sources[3] == "step_metrics"
    assert {s for k, s in sources.items() if k != 3} == {"tokens"}
    assert frame.filter(frame["step"] == 3)["token/advantage_mean"].item() is not None


def test_ranks_are_aggregated_together(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    run_dir = tmp_path / "ranks"
    recs = [Recorder.create(run_dir, settings=SETTINGS, tokenizer_info={"eos_token_ids": [0]}, world_size=2),
            None]
    recs[1] = Recorder.create(run_dir, settings=SETTINGS, tokenizer_info={"eos_token_ids": [0]}, rank=1,
                              world_size=2)
    for step in range(3):
        for rec in recs:
            rec.record_step(step, **_batch(rng, 6, 48, 0.3 * step, 0.05))
        merged = aggregates.finalize(aggregates.merge(r.partials(step) for r in recs))
        recs[0].log_metrics(step, "train", merged)
    run = open_run(run_dir)
    frame = step_series(run)
    tokens, train = brute_tokens(run), brute_rollouts(run, "train")
    assert frame["rollout/count"].to_list() == [12.0, 12.0, 12.0]
    for row in frame.iter_rows(named=True):
        assert row["token_source"] == "tokens"
        for key in TOKEN_SERIES:
            assert_close(row[key], tokens[row["step"]][key], key)
        assert_close(row["rollout/truncation_rate"], train[row["step"]]["rollout/truncation_rate"], "trunc")


def test_run_still_being_written(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path / "live", steps=5, close=False)
    stray = run_dir / "tokens" / "step=000005" / "rank=00000" / ".train.parquet.tmp-999"
    stray.write_bytes(b"PAR1 half a file")  # a writer mid-rename: hidden, never read
    frame = step_series(open_run(run_dir))
    assert open_run(run_dir).status == "running"
    assert frame["step"].to_list() == [1, 2, 3, 4, 5]


def test_length_distribution_is_one_row_per_rollout(collapsing: Path) -> None:
    run = open_run(collapsing)
    lengths = length_distribution(run)
    rows = _rows(run, "rollouts", "train")
    assert lengths.height == len(rows)
    assert sorted(lengths["num_tokens"].to_list()) == sorted(r["num_tokens"] for r in rows)


def test_rollout_aggregates_do_not_depend_on_row_order() -> None:
    """The rollout query gives the same bits for the same rows in any order (two reads of one run must
    agree exactly). These 8 values are a step of a test run whose float mean is ...668 or ...667 depending
    on the order they are added in."""
    import polars as pl

    from opdwatch.run_files import TABLE_SCHEMAS
    from opdwatch.series import rollout_query

    ratios = [0.5, 0.4375, 0.4375, 1.6666666666666667, 0.5, 0.5, 1.2, 1.6666666666666667]
    names = ("step", "num_tokens", "truncated", "zlib_tail_ratio", "repetitive", "loop_onset", "correct")
    schema = {c: TABLE_SCHEMAS["rollouts"][c] for c in names}
    rows = pl.DataFrame({"step": [1] * 8, "num_tokens": list(range(10, 18)), "truncated": [False] * 8,
                         "zlib_tail_ratio": ratios, "repetitive": [False] * 8, "loop_onset": [None] * 8,
                         "correct": [True, False] * 4}, schema=schema)
    rng = np.random.default_rng(0)
    results = {rollout_query(rows[rng.permutation(8).tolist()].lazy()).collect()
               ["rollout/zlib_tail_ratio_mean"][0] for _ in range(20)}
    assert len(results) == 1
    assert results.pop() == pytest.approx(math.fsum(ratios) / 8, rel=1e-15)
    # the plain (unordered) mean of these values does depend on the order: the test can fail
    plain = {sum(ratios[i] for i in rng.permutation(8)) / 8 for _ in range(20)}
    assert len(plain) > 1
