"""Synthetic data, file loading, the char tokenizer and the KV-cache rollout engine."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from opdwatch.errors import OpdwatchError
from opdwatch.trainer.data.task import load_examples, prompt_ids, solution_ids, synthetic_splits
from opdwatch.trainer.loop.validation import is_correct
from opdwatch.trainer.objectives.scoring import build_sequences, response_logits, token_logp
from opdwatch.trainer.recipes.demo.tiny_llama import tiny_llama
from opdwatch.trainer.recipes.demo.tokenizer import build_char_tokenizer
from opdwatch.trainer.rollout.engine import SamplingParams
from opdwatch.trainer.rollout.hf_engine import HFEngine


def test_synthetic_splits_are_deterministic_and_correct() -> None:
    a, b = synthetic_splits(7, (50, 20, 10)), synthetic_splits(7, (50, 20, 10))
    assert a == b
    assert not {ex.question for ex in a.val} & {ex.question for ex in a.sft + a.opd}
    for ex in a.sft[:20]:
        assert ex.question.startswith("Q:") and ex.question.endswith("=?")
        assert eval(ex.question[2:-2]) == int(ex.answer)  # the golden answer is right
        assert ex.solution.endswith(f"\\boxed{{{ex.answer}}}")
        assert is_correct(ex.answer, ex.solution)
    assert not is_correct("3", "\\boxed{4}")


def test_char_tokenizer_round_trip() -> None:
    tok = build_char_tokenizer()
    ex = synthetic_splits(0, (1, 1, 1)).sft[0]
    ids = prompt_ids(tok, ex.question)
    assert len(ids) == len(ex.question) and tok.decode(ids) == ex.question
    sol = solution_ids(tok, ex.solution)
    assert sol[-1] == tok.eos_token_id and tok.decode(sol, skip_special_tokens=True) == ex.solution


def test_file_layouts(tmp_path) -> None:
    rows = [{"problem": "1+1?", "solution": "2. \\boxed{2}", "answer": "2"}]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    pq.write_table(
        pa.Table.from_pylist([{"question": "2+2?", "solution": "\\boxed{4}", "answer": "4"}]),
        tmp_path / "b.parquet",
    )
    assert load_examples(tmp_path / "a.jsonl")[0].question == "1+1?"
    assert load_examples(tmp_path / "b.parquet")[0].answer == "4"
    (tmp_path / "c.jsonl").write_text(json.dumps({"question": "x"}))
    with pytest.raises(OpdwatchError):
        load_examples(tmp_path / "c.jsonl")


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return tiny_llama(
        vocab_size=29, hidden=32, layers=1, heads=4, intermediate=64, max_len=256, pad_id=0, eos_id=1, seed=0
    ).eval()


def test_engine_logp_matches_full_forward_and_finish_reasons(model) -> None:
    prompts = [[3, 4, 5], [6], [7, 8, 9, 10, 11]] * 4
    engine = HFEngine(model, eos_id=1, pad_id=0, generator=torch.Generator().manual_seed(0))
    batch = engine.generate(prompts, SamplingParams(temperature=1.0, max_new_tokens=12))
    responses = batch.token_lists()
    seq = build_sequences(prompts, responses, pad_id=0)
    with torch.no_grad():
        logp_BT = token_logp(response_logits(model, seq), seq.tokens_BT)
    mask = seq.mask_BT.bool()
    assert torch.allclose(logp_BT[mask], batch.logp_BT[:, : seq.tokens_BT.shape[1]][mask], atol=1e-5)
    for r, reason in zip(responses, batch.finish_reasons, strict=True):
        assert reason == ("eos" if 1 in r else "length")
        assert reason == "eos" or len(r) == 12
        assert 1 not in r[:-1]


def test_engine_is_reproducible_and_greedy_is_argmax(model) -> None:
    prompts = [[3, 4], [5, 6, 7]]
    runs = [
        HFEngine(model, eos_id=1, pad_id=0, generator=torch.Generator().manual_seed(3))
        .generate(prompts, SamplingParams(max_new_tokens=8))
        .token_lists()
        for _ in range(2)
    ]
    assert runs[0] == runs[1]
    greedy = HFEngine(model, eos_id=1, pad_id=0).generate(
        prompts, SamplingParams(temperature=0, max_new_tokens=8)
    )
    seq = build_sequences(prompts, greedy.token_lists(), pad_id=0)
    with torch.no_grad():
        argmax = response_logits(model, seq).argmax(-1)
    assert torch.equal(argmax[seq.mask_BT.bool()], seq.tokens_BT[seq.mask_BT.bool()])


def test_tiny_top_p_keeps_only_the_top_token(model) -> None:
    prompts = [[3, 4], [5, 6, 7], [8]]
    greedy = HFEngine(model, eos_id=1, pad_id=0).generate(prompts, SamplingParams(temperature=0, max_new_tokens=8))
    nucleus = HFEngine(model, eos_id=1, pad_id=0, generator=torch.Generator().manual_seed(5)).generate(
        prompts, SamplingParams(temperature=1.0, top_p=1e-6, max_new_tokens=8)
    )
    assert nucleus.token_lists() == greedy.token_lists()
    mask = torch.arange(nucleus.logp_BT.shape[1])[None] < nucleus.lengths_B[:, None]
    assert torch.allclose(nucleus.logp_BT[mask], torch.zeros(()), atol=1e-6)  # renormalised over one token
