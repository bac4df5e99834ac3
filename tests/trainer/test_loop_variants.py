"""The Revisiting-OPD options inside the training loop: top-K estimator, top-p, special-token masking, EOS mapping,
and the GPU presets' configs."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

import opdwatch
from opdwatch.errors import OpdwatchError
from opdwatch.trainer.config import load_config
from opdwatch.trainer.data.models import load_causal_lm, load_tokenizer
from opdwatch.trainer.loop.components import model_path
from opdwatch.trainer.loop.loop import train

CONFIGS = Path(__file__).parents[2] / "trainer" / "configs"


def test_topk_top_p_and_masking_run_end_to_end(tiny_config) -> None:
    config = tiny_config("opd.steps=2", "val.every=0", "run.name=revisit", "objective.estimator=topk_reverse_kl",
                         "objective.topk=4", "objective.mask_special_tokens=true", "opd.score_chunk_rows=3",
                         "rollout.top_p=0.9")
    run = opdwatch.open_run(train(config))
    steps = run.steps().collect().filter(pl.col("phase") == "train").sort("step")
    assert steps["step"].to_list() == [1, 2]
    assert all(v >= 0 for v in steps["loss/opd"].to_list())  # a KL, unlike the surrogate
    assert steps["update/skipped_nonfinite"].to_list() == [0.0, 0.0]
    tokens = run.tokens().collect()
    # the weak student sometimes samples <pad>/<unk> mid-rollout: those special tokens get no loss, EOS keeps it
    assert not tokens.filter(pl.col("special") & ~pl.col("eos"))["loss_mask"].any()
    assert tokens.filter(~pl.col("special") | pl.col("eos"))["loss_mask"].all()
    assert tokens.filter(pl.col("eos")).height > 0
    assert run.manifest["config"]["objective"]["estimator"] == "topk_reverse_kl"


def test_chunked_scoring_and_micro_batches_give_the_same_run(tiny_config) -> None:
    """score_chunk_rows / micro_rows only bound memory: records and final weights match the unchunked run."""
    import torch

    from opdwatch.trainer.loop.checkpoint import list_checkpoints

    base = ("opd.steps=2", "val.every=0", "checkpoint.every=0")
    whole = train(tiny_config(*base, "run.name=whole"))
    chunked = train(tiny_config(*base, "run.name=chunked", "opd.score_chunk_rows=3", "opd.micro_rows=1"))
    s1, s2 = (opdwatch.open_run(d).steps().collect().filter(pl.col("phase") == "train").sort("step")
              for d in (whole, chunked))
    for col in ("loss/total", "loss/opd", "loss/kl", "loss/sft", "optim/grad_norm", "token/teacher_logp_mean",
                "token/ref_logp_mean", "rollout/mean_length"):
        assert s1[col].to_numpy() == pytest.approx(s2[col].to_numpy(), rel=1e-4, abs=1e-6), col
    w1, w2 = (torch.load(list_checkpoints(d)[-1] / "state.pt")["student"] for d in (whole, chunked))
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.fixture
def teacher_with_other_eos(tiny_config, tmp_path: Path) -> Path:
    """The demo teacher re-saved with a tokenizer whose EOS is a new token `</s>` (id 29, not the student's 1)."""
    config = tiny_config()
    path = Path(model_path(config, "teacher"))
    tok = load_tokenizer(str(path))
    model = load_causal_lm(str(path), trainable=False)
    tok.add_special_tokens({"eos_token": "</s>"})
    model.resize_token_embeddings(len(tok))
    out = tmp_path / "teacher-other-eos"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_mismatched_eos_refuses_then_maps(tiny_config, teacher_with_other_eos: Path) -> None:
    teacher_eos = load_tokenizer(str(teacher_with_other_eos)).eos_token_id
    base = ("opd.steps=1", "val.every=0", f"models.teacher={teacher_with_other_eos}")
    with pytest.raises(OpdwatchError) as err:
        train(tiny_config(*base, "run.name=refused"))
    assert "\n" not in str(err.value) and "EOS differs" in str(err.value)

    run = opdwatch.open_run(train(tiny_config(*base, "run.name=mapped", "tokens.eos_map=auto")))
    mapping = run.manifest["tokenizer"]["eos_mapping"]
    assert mapping["student_to_teacher"] == {"1": teacher_eos} and mapping["student_stop_ids"] == [1]
    assert run.status == "finished"


def test_gpu_presets_load_and_differ_in_the_fixes(tmp_path: Path) -> None:
    data = tmp_path / "openr1.jsonl"
    data.write_text(json.dumps({"problem": "1+1?", "solution": "2", "answer": "2"}) + "\n")
    base = load_config(CONFIGS / "gpu_qwen1p5b_r1distill7b.yaml", [f"data.source={data}"])
    stable = load_config(CONFIGS / "gpu_qwen1p5b_r1distill7b_stable.yaml", [f"data.source={data}"])
    assert (base.models.student, base.models.teacher) == ("Qwen/Qwen2.5-Math-1.5B",
                                                          "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B")
    assert (base.rollout.prompts_per_step, base.rollout.samples_per_prompt) == (64, 4)
    assert base.engine.kind == stable.engine.kind == "vllm" and base.tokens.eos_map == "auto"
    assert (base.objective.estimator, stable.objective.estimator) == ("sampled_token", "topk_reverse_kl")
    assert (base.rollout.top_p, stable.rollout.top_p) == (1.0, 0.95)
    assert not base.objective.mask_special_tokens and stable.objective.mask_special_tokens
    assert (stable.opd.beta, stable.opd.alpha) == (0.1, 0.5) and (base.opd.beta, base.opd.alpha) == (0.0, 0.0)


@pytest.mark.parametrize("override, message", [("objective.estimator=nope", "objective.estimator='nope'"),
                                               ("engine.kind=sglang", "engine.kind='sglang'"),
                                               ("objective.topk=0", "objective.topk=0")])
def test_bad_variant_settings_are_one_line_errors(override: str, message: str) -> None:
    with pytest.raises(OpdwatchError, match=message):
        load_config(None, [override])
