"""The metric table: it covers every step metric, and the recorder's step metrics equal the analysis'
recomputation from the Parquet tables for every metric, on recorded runs with NaN and inf log-probs, empty
loss masks, rollouts without loss-masked tokens, EOS tokens, empty rollouts, minibatches and two ranks."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from opdwatch import aggregates, metric_defs
from opdwatch.format import ROLLOUT_SCHEMA, TOKEN_SCHEMA
from opdwatch.metric_defs import METRICS
from opdwatch.reader import open_run
from opdwatch.recorder import Recorder, RecorderSettings
from opdwatch.series import ROLLOUT_SERIES, TOKEN_SERIES, rollout_aggregates, token_aggregates

SETTINGS = RecorderSettings(tail_window=32, tail_threshold=0.6, ngram_n=3, loop_min_run=4)
EOS = 2
# The partial keys are the distributed-reduction contract (trainer/parallel/distributed.py all-gathers them).
PARTIAL_KEYS = {
    *(f"{kind}:rollout/{name}" for kind in ("sum", "n") for name in
      ("truncation_rate", "repetition_rate", "loop_rate", "mean_length", "zlib_tail_ratio_mean", "accuracy")),
    "max:rollout/max_length", "sq:rollout/mean_length", "sum:rollout/count", "sum:token/count",
    *(f"{kind}:token/{name}" for kind in ("sum", "n") for name in
      ("student_logp_mean", "teacher_logp_mean", "ref_logp_mean", "advantage_mean", "adv_repetitive_mean",
       "adv_regular_mean", "adv_tail_mean", "repetitive_share", "ngram_repeat_share", "tail_share",
       "eos_advantage_mean")),
}


# ------------------------------------------------------------------------------------------- coverage
def _full_partials() -> aggregates.Partials:
    rng = np.random.default_rng(0)
    r, n = 4, 20
    flags = rng.random(n) < 0.5
    return aggregates.partials(
        num_tokens=np.full(r, 5), truncated=np.zeros(r, bool), repetitive=np.zeros(r, bool),
        looping=np.zeros(r, bool), tail_ratio=np.ones(r), correct=np.ones(r), student_logp=rng.random(n),
        teacher_logp=rng.random(n), ref_logp=rng.random(n), advantage=rng.random(n), loss_mask=np.ones(n, bool),
        rep_ngram=flags, rep_tail=~flags, eos=flags)


def test_table_covers_exactly_the_finalized_and_series_keys() -> None:
    keys = [d.key for d in METRICS]
    assert set(aggregates.finalize(_full_partials())) == set(keys)
    assert (*ROLLOUT_SERIES, *TOKEN_SERIES) == tuple(keys)
    assert all(k.startswith("rollout/") for k in ROLLOUT_SERIES)
    assert all(k.startswith("token/") for k in TOKEN_SERIES)
    assert set(_full_partials()) == PARTIAL_KEYS


def test_sources_and_masks_are_table_columns() -> None:
    assert set(metric_defs.stored_columns("token")) == {
        "loss_mask", "student_logp", "teacher_logp", "ref_logp", "advantage", "rep_tail", "rep_ngram", "eos"}
    assert set(metric_defs.stored_columns("token")) <= set(TOKEN_SCHEMA.names)
    # looping is stored as a non-null loop_onset
    assert set(metric_defs.stored_columns("rollout")) <= set(ROLLOUT_SCHEMA.names) | {"looping"}
    per_rollout = {d.rollout_column for d in METRICS if d.rollout_column}
    assert per_rollout == {"student_logp_mean", "teacher_logp_mean", "advantage_mean", "repetitive_token_share"}
    assert per_rollout <= set(ROLLOUT_SCHEMA.names)


def test_a_bad_table_edit_fails_at_import() -> None:
    cv = next(d for d in METRICS if d.reduction == "cv")
    bad = (*METRICS, metric_defs.MetricDef("rollout/x", "rollout", None, None, "mean"))
    with pytest.raises(ValueError, match="counts and only counts"):
        metric_defs._check(bad)
    with pytest.raises(ValueError, match="duplicate"):
        metric_defs._check((*METRICS, cv))


# ------------------------------------------------------------------------------------------- recorded runs
@dataclass
class Raw:
    """What the test fed the recorder for one (step, phase), over all minibatches and ranks."""

    lengths: list[int] = field(default_factory=list)
    correct: list[bool | None] = field(default_factory=list)
    student: list[np.ndarray] = field(default_factory=list)  # per rollout (L,) float32
    advantage: list[np.ndarray] = field(default_factory=list)
    mask: list[np.ndarray] = field(default_factory=list)
    eos_last: list[bool] = field(default_factory=list)  # ends with the EOS token and finish reason "eos"


def _batch(rng: np.random.Generator, count: int, *, mask_mode: str, with_ref: bool, given_adv: bool,
           with_inf: bool) -> dict[str, Any]:
    ids, texts, reasons, s, t, masks, correct = [], [], [], [], [], [], []
    for i in range(count):
        kind = i % 5
        if kind == 0:  # a loop that hit the budget: repetitive tail and n-gram repeats
            seq = np.resize(np.array([5, 6, 7]), int(rng.integers(20, 40)))
            text, reason = "abc" * len(seq), "length"
        elif kind == 4 and i % 10 == 4:  # an empty response
            seq, text, reason = np.array([], dtype=np.int64), "", "length"
        else:
            seq = np.concatenate([rng.integers(10, 40, size=int(rng.integers(2, 12))), [EOS]])
            text = "".join(chr(97 + int(x) % 26) for x in seq[:-1])
            reason = "eos" if kind != 3 else "length"  # an EOS id that is not the stop reason
        n = len(seq)
        s_lp = rng.normal(-1.0, 0.4, n).astype(np.float32)
        t_lp = rng.normal(-1.3, 0.6, n).astype(np.float32)
        s_lp[rng.random(n) < 0.1] = np.nan
        t_lp[rng.random(n) < 0.05] = np.nan
        if with_inf and n:
            t_lp[int(rng.integers(0, n))] = -np.inf
        if mask_mode == "none":
            m = np.zeros(n, bool)
        elif mask_mode == "random":
            m = rng.random(n) < 0.7 if i % 4 else np.zeros(n, bool)  # every 4th rollout: no loss tokens
        else:
            m = np.ones(n, bool)
        for out, value in ((ids, seq), (texts, text), (reasons, reason), (s, s_lp), (t, t_lp), (masks, m),
                           (correct, [True, False, None][i % 3])):
            out.append(value)
    batch: dict[str, Any] = dict(token_ids=ids, student_logp=s, teacher_logp=t, finish_reasons=reasons,
                                 texts=texts, loss_mask=masks, correct=correct)
    if with_ref:
        batch["ref_logp"] = [np.where(rng.random(len(x)) < 0.2, np.nan, -1.1).astype(np.float32) for x in ids]
    if given_adv:
        batch["advantage"] = [np.where(rng.random(len(x)) < 0.1, np.nan, rng.normal(0, 1, len(x))).astype(np.float32)
                              for x in ids]
    return batch


def _remember(raw: Raw, batch: dict[str, Any]) -> None:
    for i, seq in enumerate(batch["token_ids"]):
        raw.lengths.append(len(seq))
        raw.correct.append(batch["correct"][i])
        raw.student.append(batch["student_logp"][i])
        adv = batch["advantage"][i] if "advantage" in batch else batch["teacher_logp"][i] - batch["student_logp"][i]
        raw.advantage.append(adv)
        raw.mask.append(batch["loss_mask"][i])
        raw.eos_last.append(batch["finish_reasons"][i] == "eos" and len(seq) > 0 and seq[-1] == EOS)


# (mask mode, with ref log-probs, advantage given, an -inf teacher log-prob) per step
STEPS = [("all", False, False, False), ("random", True, False, True), ("none", False, False, False),
         ("random", False, True, False), ("all", True, True, True), ("random", False, False, False)]


def _record(run_dir: Path, ranks: int) -> dict[tuple[int, str], Raw]:
    rng = np.random.default_rng(ranks)
    recs = [Recorder.create(run_dir, settings=SETTINGS, tokenizer_info={"eos_token_ids": [EOS]}, rank=0,
                            world_size=ranks)]
    recs += [Recorder.create(run_dir, settings=SETTINGS, tokenizer_info={"eos_token_ids": [EOS]}, rank=r,
                             world_size=ranks) for r in range(1, ranks)]
    raw: dict[tuple[int, str], Raw] = {}
    for step, (mode, ref, adv, inf) in enumerate(STEPS):
        for phase in ("train", "val") if step % 2 else ("train",):
            for rec in recs:
                for minibatch in range(2):  # two record_step calls per step accumulate
                    batch = _batch(rng, 7 + 3 * minibatch + rec.rank, mask_mode=mode, with_ref=ref,
                                   given_adv=adv, with_inf=inf)
                    rec.record_step(step, phase=phase, **batch)
                    _remember(raw.setdefault((step, phase), Raw()), batch)
            if ranks > 1:
                merged = aggregates.finalize(aggregates.merge(r.partials(step, phase) for r in recs))
                recs[0].log_metrics(step, phase, merged)
    for rec in recs:
        rec.close()
    return raw


@pytest.fixture(scope="module", params=[1, 2], ids=["one-rank", "two-ranks"])
def recorded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    run_dir = tmp_path_factory.mktemp("defs") / "run"
    raw = _record(run_dir, request.param)
    return open_run(run_dir), raw


def _value(v: float | None) -> float | None:
    return None if v is None or math.isnan(v) else float(v)


def _same(a: float | None, b: float | None) -> bool:
    a, b = _value(a), _value(b)
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-14)


def _recorder_rows(run) -> dict[tuple[int, str], dict[str, Any]]:
    return {(r["step"], r["phase"]): r for r in run.steps().collect().iter_rows(named=True)}


def test_every_metric_recorder_equals_recomputation(recorded) -> None:
    run, raw = recorded
    rows = _recorder_rows(run)
    recomputed = {("train", "token"): token_aggregates(run.parts("tokens")),
                  ("train", "rollout"): rollout_aggregates(run, phase="train"),
                  ("val", "rollout"): rollout_aggregates(run, phase="val")}
    checked = set()
    for (phase, level), frame in recomputed.items():
        assert sorted(frame["step"].to_list()) == sorted(s for s, p in raw if p == phase)
        token_rows = frame["token_rows"].to_list() if level == "token" else None
        for i, series_row in enumerate(frame.iter_rows(named=True)):
            if token_rows is not None:  # every token row was written: the recomputation sees the whole step
                assert token_rows[i] == sum(raw[(series_row["step"], phase)].lengths)
            recorder_row = rows[(series_row["step"], phase)]
            for d in METRICS:
                if d.level == level:
                    assert _same(recorder_row.get(d.key), series_row[d.key]), \
                        (series_row["step"], phase, d.key, recorder_row.get(d.key), series_row[d.key])
                    checked.add(d.key)
    assert checked == {d.key for d in METRICS}
    # The story is not trivially empty: some steps have no loss-masked tokens, some have values.
    train = [rows[(s, "train")] for s in range(len(STEPS))]
    assert any(r["token/count"] == 0 for r in train) and all(r["token/count"] > 0 for i, r in enumerate(train)
                                                             if STEPS[i][0] != "none")
    assert all(_value(r["token/eos_advantage_mean"]) is not None for r in train)
    assert any(_value(r.get("token/ref_logp_mean")) is not None for r in train)
    assert any(_value(r["token/adv_tail_mean"]) is not None for r in train)


def _finite_mean(values: list[np.ndarray]) -> float | None:
    x = np.concatenate([np.asarray(v, dtype=np.float64) for v in values]) if values else np.array([])
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else None


def test_brute_force_numpy_from_the_inputs(recorded) -> None:
    run, raw = recorded
    rows = _recorder_rows(run)
    for (step, phase), r in raw.items():
        row = rows[(step, phase)]
        lengths = np.array(r.lengths, dtype=np.float64)
        assert row["rollout/count"] == len(lengths)
        assert row["rollout/length_cv"] == pytest.approx(lengths.std() / lengths.mean(), rel=1e-12)
        assert row["rollout/max_length"] == lengths.max()
        known = [float(c) for c in r.correct if c is not None]
        assert row["rollout/accuracy"] == pytest.approx(np.mean(known), rel=1e-12)
        assert row["token/count"] == sum(int(m.sum()) for m in r.mask)
        assert _same(row["token/student_logp_mean"], _finite_mean([s[m] for s, m in zip(r.student, r.mask)]))
        assert _same(row["token/advantage_mean"], _finite_mean([a[m] for a, m in zip(r.advantage, r.mask)]))
        # EOS advantage: the final EOS token of rollouts that stopped, loss mask or not.
        assert _same(row["token/eos_advantage_mean"],
                     _finite_mean([a[-1:] for a, e in zip(r.advantage, r.eos_last) if e]))


def test_per_rollout_means_follow_the_token_definitions(recorded) -> None:
    run, raw = recorded
    rollouts = run.rollouts().collect().sort(["step", "phase", "rank", "rollout"])
    by_key: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for row in rollouts.iter_rows(named=True):
        by_key.setdefault((row["step"], row["phase"]), []).append(row)
    for key, r in raw.items():
        rows = by_key[key]
        assert len(rows) == len(r.lengths)
        # Rollout rows per rank, in recording order: rank 0's minibatches, then rank 1's (as recorded).
        for row, s, a, m in zip(rows, r.student, r.advantage, r.mask):
            assert _same(row["student_logp_mean"], _finite_mean([s[m]]))
            assert _same(row["advantage_mean"], _finite_mean([a[m]]))
