"""opdwatch.integrations.trl on real TRL 1.16 trainers (tests/trl_tiny.py: tiny local Qwen2 pair, CPU).

Each trainer class runs 3 fully on-policy steps with the hooks attached; the run directory must then pass
`opdwatch info/analyze/detect`, its recorded log-probs must equal a float64 recomputation from the two models
on the recorded tokens, and its truncation must be "no EOS within the budget". Plus the knobs of act mode, the
wandb alert, and the one-line errors for a TRL whose methods changed.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from opdwatch import open_run
from opdwatch.cli import main
from opdwatch.errors import OpdwatchError
from opdwatch.integrations._logprobs import LogitPost, sampled_logp_from_hidden, sampled_logp_from_logits
from opdwatch.integrations._trl_knobs import alpha_of_lmbda, lmbda_of_alpha
from opdwatch.integrations.trl import TRLWatch, attach, finish_reasons
from opdwatch.live import LiveRun
from tests.trl_tiny import KINDS, build_models, build_tokenizer, make_trainer, torch_threads

# float32 trainer forward (padded batch, RoPE offsets from left padding, fused SDPA) vs a float64 forward of the
# same weights on the unpadded sequence: log-probs of magnitude <= ~15 agree to float32 rounding, ~1e-6 relative
# per op over 2 layers; 1e-4 nats leaves room for that and still catches any real misalignment (an off-by-one
# position or the wrong model differs by > 0.1 nats).
ATOL = 1e-4


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    with torch_threads(1):
        yield


def _snapshots() -> tuple[dict[int, dict], object]:
    """A callback that keeps the student's weights as they were when each step's rollouts were scored."""
    from transformers import TrainerCallback

    weights: dict[int, dict] = {}

    class Snapshot(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            weights[state.global_step + 1] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    return weights, Snapshot()


@pytest.fixture(scope="module", params=KINDS)
def attached(request, tmp_path_factory):
    kind = request.param
    root = tmp_path_factory.mktemp(kind)
    weights, snapshot = _snapshots()
    trainer = make_trainer(kind, root / "out", callbacks=[snapshot])
    attach(trainer, root / "run", TRLWatch(mode="warn", strict=True))
    trainer.train()
    return kind, root / "run", trainer, weights


def _json(capsys, argv: list[str]) -> dict:
    capsys.readouterr()
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_the_run_passes_info_analyze_and_detect(attached, capsys):
    kind, run, trainer, _ = attached
    steps = open_run(run).steps().collect().sort("step")
    info = _json(capsys, ["info", str(run), "--json"])
    assert (info["status"], info["steps"], info["first_step"], info["last_step"]) == ("finished", 3, 1, 3)
    assert info["missing_steps"] == info["truncation_unknown"] == 0
    assert info["last_train"]["rollout/truncation_rate"] == steps["rollout/truncation_rate"][-1]
    (analysis,) = _json(capsys, ["analyze", str(run), "--json"])["runs"]
    assert (analysis["status"], analysis["steps"]) == ("finished", 3) and analysis["verdict"]
    detect = _json(capsys, ["detect", str(run), "--json"])
    assert (detect["steps"], detect["first_step"], detect["last_step"]) == (3, 1, 3)
    # the replay of the recorded steps reaches the same verdicts as the live watch did during training
    events = open_run(run).events()
    live = events.filter(pl.col("kind").is_in(["warning", "alarm"]))
    assert [(t["step"], t["level"]) for t in detect["transitions"] if t["level"] in ("warning", "alarm")] == \
        list(zip(live["step"].to_list(), live["kind"].to_list(), strict=True))
    assert steps["step"].to_list() == [1, 2, 3]
    assert steps["rollout/count"].to_list() == [4.0, 4.0, 4.0]  # per_device_train_batch_size 4, all on-policy
    assert steps["trl/onpolicy_batches"].to_list() == [1.0, 1.0, 1.0]
    assert steps["trl/loss"].null_count() == 0  # TRL's own logs joined the step rows
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["config"]["trl"]["trainer"] == type(trainer).__name__
    # what the dashboard reads: the live series, a step's drill-down and one rollout's tokens with their text
    live = LiveRun(run)
    assert live.series()["step"].to_list() == [1, 2, 3]
    first = live.step_rollouts(2).row(0, named=True)
    toks = live.rollout_tokens(2, rank=first["rank"], phase="train", rollout=first["rollout"])
    assert toks.height == first["num_tokens"] and toks["advantage"].null_count() == 0


def _temperature(kind: str, trainer) -> float:
    # GKD's compute_loss calls generalized_jsd_loss without a temperature (its default, 1.0); GOLD passes
    # self.temperature; DistillationTrainer's chunked loss uses self.temperature.
    return 1.0 if kind == "gkd" else float(trainer.temperature)


def test_recorded_logprobs_equal_a_float64_recomputation(attached):
    kind, run, trainer, weights = attached
    tok = build_tokenizer()
    temperature = _temperature(kind, trainer)
    teacher = copy.deepcopy(trainer.teacher_model).double().eval()
    student = build_models()[0].double().eval()
    r = open_run(run)
    rollouts = r.rollouts().collect().sort(["step", "rollout"])
    tokens = r.tokens().collect().sort(["step", "rollout", "position"])
    worst = 0.0
    for step in (1, 2, 3):
        student.load_state_dict({k: v.double() for k, v in weights[step].items()})
        for row in rollouts.filter(pl.col("step") == step).iter_rows(named=True):
            toks = tokens.filter((pl.col("step") == step) & (pl.col("rollout") == row["rollout"]))
            prompt = tok(row["prompt_text"], add_special_tokens=False)["input_ids"]
            response = toks["token_id"].to_list()
            ids = torch.tensor([prompt + response])
            with torch.no_grad():
                expect = {}
                for name, model in (("student", student), ("teacher", teacher)):
                    logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1] / temperature
                    expect[name] = torch.log_softmax(logits, -1).gather(-1, ids[0, len(prompt):, None])[:, 0].numpy()
            got_s, got_t = toks["student_logp"].to_numpy(), toks["teacher_logp"].to_numpy()
            np.testing.assert_allclose(got_s, expect["student"], atol=ATOL, rtol=0)
            np.testing.assert_allclose(got_t, expect["teacher"], atol=ATOL, rtol=0)
            np.testing.assert_allclose(toks["advantage"].to_numpy(), expect["teacher"] - expect["student"],
                                       atol=2 * ATOL, rtol=0)
            worst = max(worst, float(np.abs(got_s - expect["student"]).max()),
                        float(np.abs(got_t - expect["teacher"]).max()))
    print(f"{kind}: max |recorded - float64| = {worst:.2e} nats")


def test_truncation_is_no_eos_within_the_budget(attached):
    kind, run, trainer, _ = attached
    tok = build_tokenizer()
    r = open_run(run)
    rollouts = r.rollouts().collect().sort(["step", "rollout"])
    tokens = r.tokens().collect()
    budget = 12
    # a truncation check on a run that never stops on EOS, or never runs out of budget, could not fail
    assert set(rollouts["truncated"].to_list()) == {True, False}
    for row in rollouts.iter_rows(named=True):
        ids = tokens.filter((pl.col("step") == row["step"]) & (pl.col("rollout") == row["rollout"]))["token_id"]
        assert 1 <= len(ids) <= budget
        assert row["truncated"] == (tok.eos_token_id not in ids.to_list()[:budget])
        assert row["truncated"] == (len(ids) == budget and ids[-1] != tok.eos_token_id)
    # special flags from the tokenizer's special ids; every response token is trained on (no tools here)
    special_ids = set(tok.all_special_ids)
    assert tokens["special"].to_list() == [t in special_ids for t in tokens["token_id"].to_list()]
    assert tokens.filter(pl.col("token_id") == tok.eos_token_id)["special"].all()
    assert tokens["loss_mask"].all()
    if kind == "distillation":  # TRL's own figure agrees here (no rollout ended on a sampled pad token)
        steps = r.steps().collect().sort("step")
        np.testing.assert_allclose(steps["rollout/truncation_rate"], steps["trl/completions/clipped_ratio"])


def test_act_mode_turns_gkd_lmbda_down(tmp_path):
    trainer = make_trainer("gkd", tmp_path / "out", max_steps=4)
    attach(trainer, tmp_path / "run", TRLWatch(mode="act", strict=True))
    trainer.train()
    r = open_run(tmp_path / "run")
    steps = r.steps().collect().sort("step")
    assert steps["rollout/truncation_rate"][0] >= 0.15  # why the detector's truncation guard escalates
    events = r.events()
    changes = [m for k, m in zip(events["kind"], events["message"], strict=True) if k == "intervention"]
    assert changes and "TRL lmbda 1 -> " in changes[0], events
    assert trainer.lmbda < 1.0
    lmbdas = steps["trl/lmbda"].to_list()
    assert lmbdas[0] == 1.0 and lmbdas[-1] == pytest.approx(trainer.lmbda)


def test_act_mode_stops_distillation_with_a_checkpoint(tmp_path):
    trainer = make_trainer("distillation", tmp_path / "out", max_steps=8, log_completions=True)
    attachment = attach(trainer, tmp_path / "run", "act")
    trainer.train()
    assert attachment.stopped_at is not None and trainer.state.global_step == attachment.stopped_at < 8
    assert (tmp_path / "out" / f"checkpoint-{attachment.stopped_at}" / "trainer_state.json").exists()
    # TRL's own completion log (tests/trl_tiny.py's log_completions), one file per logged step
    assert len(list((tmp_path / "out" / "completions").glob("completions_*.parquet"))) == attachment.stopped_at
    events = open_run(tmp_path / "run").events()
    kinds = events["kind"].to_list()
    assert "alarm" in kinds and "checkpoint" in kinds
    assert any("stopped training" in m for m in events["message"])


def test_on_trouble_is_called_in_warn_mode(tmp_path):
    seen = []
    trainer = make_trainer("gold", tmp_path / "out", max_steps=3)
    watch = TRLWatch(mode="warn", on_trouble=lambda tr, state, decisions: seen.append((state.level, decisions)))
    attach(trainer, tmp_path / "run", watch)
    trainer.train()
    assert seen and seen[0][0] in ("warning", "alarm") and seen[0][1] == []  # warn mode applies nothing
    assert trainer.lmbda == 1.0


def test_warn_mode_alerts_into_the_trainers_wandb_run(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_PROJECT", "trl-attach")
    trainer = make_trainer("gkd", tmp_path / "out", max_steps=3, report_to=["wandb"])
    attach(trainer, tmp_path / "run", TRLWatch(mode="warn", strict=True))
    run_dirs = []  # where wandb really wrote: an earlier test in the same process can pin wandb's directory
    try:
        trainer.train()
    finally:
        if wandb.run is not None:
            run_dirs.append(Path(wandb.run.dir).parent)
            wandb.finish()
    assert run_dirs, "the trainer never started a wandb run"
    events = open_run(tmp_path / "run").events()
    alerts = events.filter(pl.col("kind") == "alert")
    assert alerts.height >= 1 and "wandb" in alerts["data"][0]
    title = alerts["message"][0].encode()
    deadline, blob = time.monotonic() + 20, b""
    while time.monotonic() < deadline and title not in blob:  # the service process's last flush may trail
        blob = b"".join(f.read_bytes() for f in run_dirs[0].glob("*.wandb"))
        time.sleep(0.2)
    assert title in blob


# ------------------------------------------------------------------------------------------ errors
def test_a_training_that_raises_leaves_a_failed_run_with_its_steps(tmp_path):
    from transformers import TrainerCallback

    class Boom(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 2:
                raise RuntimeError("out of memory (simulated)")

    trainer = make_trainer("gkd", tmp_path / "out", max_steps=3, callbacks=[Boom()])
    attach(trainer, tmp_path / "run", "off")
    with pytest.raises(RuntimeError, match="simulated"):
        trainer.train()
    r = open_run(tmp_path / "run")
    assert r.status == "failed" and r.steps().collect()["step"].to_list() == [1, 2]
    assert "out of memory (simulated)" in r.events().filter(pl.col("kind") == "error")["message"][0]


def test_a_changed_trl_method_is_a_one_line_error(tmp_path):
    trainer = make_trainer("distillation", tmp_path / "out")
    trainer._get_last_hidden_state = lambda hidden: hidden  # as if a TRL release changed its parameters
    with pytest.raises(OpdwatchError) as err:
        attach(trainer, tmp_path / "run")
    msg = str(err.value)
    assert "\n" not in msg and "_get_last_hidden_state" in msg and "TRL 1.16" in msg and "logits_to_keep" in msg
    assert not (tmp_path / "run").exists()  # nothing recorded, nothing wrapped
    del trainer._get_last_hidden_state
    gkd = make_trainer("gkd", tmp_path / "out2")
    gkd.generalized_jsd_loss = None  # as if renamed
    with pytest.raises(OpdwatchError, match=r"GKDTrainer\.generalized_jsd_loss is missing in TRL"):
        attach(gkd, tmp_path / "run2")


def test_unsupported_trainers_and_settings_are_one_line_errors(tmp_path):
    with pytest.raises(OpdwatchError, match="not a trainer opdwatch can attach to"):
        attach(object(), tmp_path / "run")
    with pytest.raises(OpdwatchError, match="lmbda=0"):
        attach(make_trainer("gkd", tmp_path / "out", lmbda=0.0), tmp_path / "run")
    with pytest.raises(OpdwatchError, match="watch mode"):
        attach(make_trainer("gkd", tmp_path / "out"), tmp_path / "run", "loud")
    scaled = make_trainer("distillation", tmp_path / "out")
    scaled.model.config.logits_scaling = 2.0  # Granite-style: a post-processing the hidden-state hook lacks
    with pytest.raises(OpdwatchError, match="logits_scaling"):
        attach(scaled, tmp_path / "run")
    (tmp_path / "taken").mkdir()
    first = make_trainer("gold", tmp_path / "out")
    attach(first, tmp_path / "taken", "off")
    with pytest.raises(OpdwatchError, match="already recorded"):
        attach(make_trainer("gold", tmp_path / "out"), tmp_path / "taken")
    with pytest.raises(OpdwatchError, match="already attached"):
        attach(first, tmp_path / "elsewhere")


def test_without_trl_attach_says_how_to_install_it(tmp_path, monkeypatch):
    trainer = make_trainer("gkd", tmp_path / "out")
    monkeypatch.setitem(sys.modules, "trl", None)  # import trl -> ImportError
    with pytest.raises(OpdwatchError, match=r"needs TRL: pip install 'opdwatch\[trl\]'"):
        attach(trainer, tmp_path / "run")


# ---------------------------------------------------------------------------------- pure functions
def test_sampled_logp_from_logits_and_hidden_equal_the_full_log_softmax_in_float64():
    g = torch.Generator().manual_seed(0)
    B, T, H, V = 3, 5, 4, 11
    hidden = torch.randn(B, T, H, generator=g, dtype=torch.float64)
    head = torch.nn.Linear(H, V, bias=True).double()
    ids = torch.randint(0, V, (B, T), generator=g)
    valid = torch.rand(B, T, generator=g) > 0.3
    post = LogitPost(scale=1.5, softcap=3.0, temperature=0.7)
    logits = head(hidden)
    full = torch.log_softmax(3.0 * torch.tanh(logits * 1.5 / 3.0) / 0.7, -1).gather(-1, ids[..., None])[..., 0]
    want = full[valid]
    for chunk in (1, 4, 1024):  # chunk boundaries never change a value
        got_h = sampled_logp_from_hidden(hidden, head, ids, valid, post=post, chunk=chunk)
        got_l = sampled_logp_from_logits(logits, ids, valid, post=post, chunk=chunk)
        torch.testing.assert_close(got_h.double(), want, atol=1e-6, rtol=0)  # float32 output
        torch.testing.assert_close(got_l.double(), want, atol=1e-6, rtol=0)


def test_finish_reasons_and_the_lmbda_mapping():
    responses = [np.array([5, 6, 2]), np.array([5, 6, 7]), np.array([5, 2, 9, 9]), np.array([], dtype=np.int64)]
    assert finish_reasons(responses, [2], budget=3) == ["eos", "length", "eos", "length"]
    assert finish_reasons([np.array([5, 6, 7, 2])], [2], budget=3) == ["length"]  # EOS past the budget
    for lmbda in (1.0, 0.8, 0.5, 0.25):
        assert lmbda_of_alpha(alpha_of_lmbda(lmbda)) == pytest.approx(lmbda)
    assert lmbda_of_alpha(0.0) == 1.0 and lmbda_of_alpha(0.5) == pytest.approx(2 / 3) and lmbda_of_alpha(2.0) == \
        pytest.approx(1 / 3)


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_accumulation_records_every_micro_batch_of_a_step(tmp_path, kind):
    # 2 micro-batches of 2 per optimizer step: TRL generates per micro-batch (GKD) or for the whole step and
    # splits it (DistillationTrainer, GOLD); either way the step's row holds all 4 rollouts
    trainer = make_trainer(kind, tmp_path / "out", max_steps=2, batch_size=2, gradient_accumulation_steps=2)
    attach(trainer, tmp_path / "run", TRLWatch(mode="off", strict=True))
    trainer.train()
    steps = open_run(tmp_path / "run").steps().collect().sort("step")
    assert steps["rollout/count"].to_list() == [4.0, 4.0]
    assert steps["trl/onpolicy_batches"].to_list() == [2.0, 2.0]
