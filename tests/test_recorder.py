"""Recorder: derived fields, aggregates, thinning, chunks, resume, events, bad input."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from opdwatch import aggregates
from opdwatch.errors import OpdwatchError
from opdwatch.reader import open_run
from opdwatch.recorder import Recorder, RecorderSettings

SETTINGS = RecorderSettings(tail_window=32, tail_threshold=0.6, ngram_n=3, loop_min_run=4)
EOS = 2


def batch(rng: np.random.Generator, n: int = 6):
    ids, texts, reasons = [], [], []
    for i in range(n):
        if i % 3 == 0:  # a loop that hit the budget
            seq = np.resize(np.array([5, 6, 7]), 24)
            texts.append("abc" * 24)
            reasons.append("length")
        else:
            seq = np.concatenate([rng.integers(10, 40, size=int(rng.integers(3, 10))), [EOS]])
            texts.append("".join(chr(97 + int(t) % 26) for t in seq[:-1]))
            reasons.append("eos")
        ids.append(seq)
    s = [rng.normal(-1, 0.3, size=len(x)) for x in ids]
    t = [rng.normal(-1.2, 0.5, size=len(x)) for x in ids]
    return ids, s, t, texts, reasons


def record(rec: Recorder, step: int, rng: np.random.Generator, **kw):
    ids, s, t, texts, reasons = batch(rng)
    out = rec.record_step(step, token_ids=ids, student_logp=s, teacher_logp=t, finish_reasons=reasons,
                          texts=texts, prompt_ids=[f"p{i // 2}" for i in range(len(ids))],
                          sample_index=[i % 2 for i in range(len(ids))], **kw)
    return out, (ids, s, t, texts, reasons)


def test_token_and_rollout_fields_are_consistent(tmp_path):
    rng = np.random.default_rng(0)
    rec = Recorder.create(tmp_path / "r", tokenizer_info={"eos_token_ids": [EOS], "special_token_ids": [EOS]},
                          settings=SETTINGS)
    metrics, (ids, s, t, texts, reasons) = record(rec, 0, rng)
    rec.close()
    run = open_run(tmp_path / "r")
    tok = run.tokens().collect().sort(["rollout", "position"])
    ro = run.rollouts().collect().sort("rollout")
    # advantage = teacher - student, per token
    flat_s = np.concatenate(s).astype(np.float32)
    flat_t = np.concatenate(t).astype(np.float32)
    assert np.allclose(tok["advantage"].to_numpy(), flat_t - flat_s)
    # truncated exactly when the budget ran out without EOS
    assert ro["truncated"].to_list() == [r == "length" for r in reasons]
    assert ro["num_tokens"].to_list() == [len(x) for x in ids]
    # EOS flag only on the last token of rollouts that stopped
    eos_rows = tok.filter(pl.col("eos"))
    assert sorted(eos_rows["rollout"].to_list()) == [i for i, r in enumerate(reasons) if r == "eos"]
    assert (eos_rows["token_id"] == EOS).all() and eos_rows["special"].all()
    # loops are repetitive, with a tail and a loop onset; the others are not
    loops = ro.filter(pl.col("truncated"))
    assert loops["repetitive"].all() and loops["loop_onset"].is_not_null().all()
    assert not ro.filter(~pl.col("truncated"))["repetitive"].any()
    # step aggregates equal a brute-force recomputation
    rep = (tok["rep_ngram"] | tok["rep_tail"]).to_numpy()
    adv = tok["advantage"].to_numpy().astype(np.float64)
    assert metrics["rollout/truncation_rate"] == pytest.approx(np.mean([r == "length" for r in reasons]))
    assert metrics["token/advantage_mean"] == pytest.approx(adv.mean())
    assert metrics["token/adv_repetitive_mean"] == pytest.approx(adv[rep].mean())
    assert metrics["token/adv_regular_mean"] == pytest.approx(adv[~rep].mean())
    assert metrics["token/repetitive_share"] == pytest.approx(rep.mean())
    assert metrics["token/eos_advantage_mean"] == pytest.approx(adv[tok["eos"].to_numpy()].mean())
    assert metrics["rollout/mean_length"] == pytest.approx(np.mean([len(x) for x in ids]))
    steps = run.steps("train").collect()
    assert steps.height == 1 and steps["rollout/truncation_rate"][0] == metrics["rollout/truncation_rate"]


def test_padded_input_equals_ragged(tmp_path):
    rng = np.random.default_rng(1)
    ids, s, t, texts, reasons = batch(rng)
    lengths = np.array([len(x) for x in ids])
    pad = np.zeros((len(ids), lengths.max()), dtype=np.int64)
    pad_s = np.full(pad.shape, np.nan)
    pad_t = np.full(pad.shape, np.nan)
    for i, x in enumerate(ids):
        pad[i, :len(x)], pad_s[i, :len(x)], pad_t[i, :len(x)] = x, s[i], t[i]
    a = Recorder.create(tmp_path / "a", settings=SETTINGS)
    b = Recorder.create(tmp_path / "b", settings=SETTINGS)
    ma = a.record_step(0, token_ids=ids, student_logp=s, teacher_logp=t, finish_reasons=reasons, texts=texts)
    mb = b.record_step(0, token_ids=pad, lengths=lengths, student_logp=pad_s, teacher_logp=pad_t,
                       finish_reasons=reasons, texts=texts)
    ma.pop("time/record"), mb.pop("time/record")
    assert ma == pytest.approx(mb, nan_ok=True)
    ta, tb = open_run(tmp_path / "a").tokens().collect(), open_run(tmp_path / "b").tokens().collect()
    assert ta.equals(tb)


def test_torch_tensors_are_accepted(tmp_path):
    torch = pytest.importorskip("torch")
    rec = Recorder.create(tmp_path / "r", settings=SETTINGS)
    ids = torch.tensor([[5, 6, 7, 2], [8, 9, 0, 0]])
    lp = torch.zeros(2, 4, dtype=torch.bfloat16, requires_grad=True)
    out = rec.record_step(0, token_ids=ids, lengths=torch.tensor([4, 2]), student_logp=lp, teacher_logp=lp - 1,
                          finish_reasons=["eos", "length"], texts=["abc", "de"])
    assert out["token/count"] == 6 and out["token/advantage_mean"] == pytest.approx(-1.0)


def test_thinning_keeps_rollouts_and_metrics_exact(tmp_path):
    thin = RecorderSettings(**{**SETTINGS.__dict__, "token_every_k_steps": 2, "token_rollout_fraction": 0.5})
    full_rec = Recorder.create(tmp_path / "full", settings=SETTINGS)
    thin_rec = Recorder.create(tmp_path / "thin", settings=thin)
    for step in range(4):
        m_full, _ = record(full_rec, step, np.random.default_rng(step))
        m_thin, _ = record(thin_rec, step, np.random.default_rng(step))
        m_full.pop("time/record"), m_thin.pop("time/record")
        assert m_full == pytest.approx(m_thin, nan_ok=True)
    full, thin_run = open_run(tmp_path / "full"), open_run(tmp_path / "thin")
    assert full.rollouts().collect().height == thin_run.rollouts().collect().height
    thin_tokens = thin_run.tokens().collect()
    assert set(thin_tokens["step"].unique().to_list()) <= {0, 2}
    assert 0 < thin_tokens.height < full.tokens().collect().height
    recorded = thin_run.rollouts().filter(pl.col("tokens_recorded")).collect()
    assert set(zip(recorded["step"], recorded["rollout"])) == set(
        zip(thin_tokens["step"], thin_tokens["rollout"]))


def test_chunks_accumulate_into_one_step(tmp_path):
    rec = Recorder.create(tmp_path / "r", settings=SETTINGS)
    m1, b1 = record(rec, 3, np.random.default_rng(0))
    m2, b2 = record(rec, 3, np.random.default_rng(1))
    run = open_run(tmp_path / "r")
    ro = run.rollouts().collect()
    assert ro["rollout"].sort().to_list() == list(range(12))
    lengths = [len(x) for x in b1[0] + b2[0]]
    assert m2["rollout/mean_length"] == pytest.approx(np.mean(lengths))
    assert run.steps().collect().height == 1


def test_two_ranks_round_trip_and_partials_reduce(tmp_path):
    path = tmp_path / "r"
    recs = [Recorder.create(path, rank=r, world_size=2, settings=SETTINGS) for r in (0, 1)]
    parts, single = [], Recorder.create(tmp_path / "single", settings=SETTINGS)
    for r, rec in enumerate(recs):
        _, b = record(rec, 0, np.random.default_rng(10 + r))
        parts.append(rec.partials(0))
    merged = aggregates.finalize(aggregates.merge(parts))
    recs[0].log_metrics(0, "train", merged)
    for rec in recs:
        rec.close()
    # the same 12 rollouts through one recorder give the same global metrics
    both = [batch(np.random.default_rng(10 + r)) for r in (0, 1)]
    m = single.record_step(0, token_ids=both[0][0] + both[1][0], student_logp=both[0][1] + both[1][1],
                           teacher_logp=both[0][2] + both[1][2], finish_reasons=both[0][4] + both[1][4],
                           texts=both[0][3] + both[1][3])
    m.pop("time/record")
    assert merged == pytest.approx(m, nan_ok=True)
    run = open_run(path)
    ro = run.rollouts().collect()
    assert sorted(set(ro["rank"].to_list())) == [0, 1] and ro.height == 12
    assert run.tokens().collect()["rank"].n_unique() == 2
    assert run.steps().collect().height == 1


def test_resume_drops_later_steps_and_events(tmp_path):
    rec = Recorder.create(tmp_path / "r", settings=SETTINGS)
    for step in range(5):
        record(rec, step, np.random.default_rng(step))
        rec.event("checkpoint", step=step, message="ckpt")
    # crash: no close. Resume after step 2.
    rec2 = Recorder.create(tmp_path / "r", settings=SETTINGS, resume_from_step=2)
    for step in range(3, 5):
        record(rec2, step, np.random.default_rng(step))
    rec2.close()
    run = open_run(tmp_path / "r")
    steps = run.steps().collect()["step"].to_list()
    assert steps == [0, 1, 2, 3, 4]
    assert run.rollouts().collect().group_by("step").len().sort("step")["len"].to_list() == [6] * 5
    ev = run.events()
    assert ev.filter(pl.col("kind") == "checkpoint")["step"].to_list() == [0, 1, 2]
    assert ev.filter(pl.col("kind") == "resume").height == 1
    assert run.status == "finished"


def test_new_run_refuses_existing_directory(tmp_path):
    Recorder.create(tmp_path / "r").close()
    with pytest.raises(OpdwatchError, match="already recorded"):
        Recorder.create(tmp_path / "r")


@pytest.mark.parametrize("kwargs, match", [
    ({"finish_reasons": ["done", "eos"]}, "finish_reasons"),
    ({"texts": ["only one"]}, "texts"),
    ({"source": "teacher"}, "source"),
    ({"phase": "test"}, "phase"),
    ({"student_logp": [np.zeros(3), np.zeros(1)]}, "student_logp"),
])
def test_bad_input_is_one_clear_error(tmp_path, kwargs, match):
    rec = Recorder.create(tmp_path / "r")
    args = {"token_ids": [np.array([1, 2, 3]), np.array([4, 5])], "finish_reasons": ["eos", "length"],
            "texts": ["abc", "de"]}
    args.update(kwargs)
    with pytest.raises(OpdwatchError, match=match) as info:
        rec.record_step(0, **args)
    assert "\n" not in str(info.value)


def test_settings_validation():
    with pytest.raises(OpdwatchError):
        RecorderSettings(token_rollout_fraction=1.5).validate()
    with pytest.raises(OpdwatchError):
        RecorderSettings(tail_window=0).validate()


def test_events_and_context_manager_failure(tmp_path):
    with pytest.raises(RuntimeError), Recorder.create(tmp_path / "r") as rec:
        rec.event("intervention", step=1, message="beta 0.1 -> 0.2", beta=np.float64(0.2))
        raise RuntimeError("boom")
    run = open_run(tmp_path / "r")
    assert run.status == "failed"
    ev = run.events()
    assert ev["kind"].to_list() == ["intervention", "error"]
    assert json.loads(ev["data"][0]) == {"beta": 0.2}
    with pytest.raises(OpdwatchError):
        rec.event("party")


def test_a_run_that_is_not_live_writes_its_manifest_on_close(tmp_path):
    """live=False (imports into a temp dir): step files as usual, the manifest's last step only on close."""
    run = tmp_path / "run"
    rec = Recorder.create(run, settings=SETTINGS, tokenizer_info={"eos_token_ids": [EOS]}, live=False)
    for step in (1, 2, 3):
        rec.log_metrics(step, "train", {"loss/total": float(step)})
    on_disk = json.loads((run / "manifest.json").read_text())
    assert on_disk["last_step"] is None and on_disk["status"] == "running"
    rec.close()
    on_disk = json.loads((run / "manifest.json").read_text())
    assert on_disk["last_step"] == 3 and on_disk["status"] == "finished"
    steps = open_run(run).steps().collect()
    assert steps["loss/total"].to_list() == [1.0, 2.0, 3.0]


def test_a_live_run_writes_its_manifest_every_step(tmp_path):
    rec = Recorder.create(tmp_path / "run", settings=SETTINGS, tokenizer_info={"eos_token_ids": [EOS]})
    rec.log_metrics(1, "train", {"loss/total": 1.0})
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["last_step"] == 1
    rec.close()
