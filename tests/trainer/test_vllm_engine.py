"""The vLLM engine: parameter mapping, output conversion and weight-sync plumbing run everywhere on objects shaped
like vLLM's (fields as in vLLM 0.33's outputs.py / logprobs.py); the real-engine test needs vLLM and CUDA."""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from opdwatch.errors import OpdwatchError
from opdwatch.trainer.rollout.engine import RowIndex, SamplingParams
from opdwatch.trainer.rollout.vllm_engine import (
    VLLMEngine,
    launch_kwargs,
    parameter_version,
    to_rollout_batch,
    vllm_sampling_kwargs,
)

STOP = (1, 7)
PAD = 0


@dataclass
class Logprob:  # vllm.logprobs.Logprob
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:  # vllm.outputs.CompletionOutput (the fields we read, same names and types)
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class RequestOutput:  # vllm.outputs.RequestOutput
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: Any
    outputs: list[CompletionOutput]
    finished: bool = True


def completion(tokens: list[int], logps: list[float], reason: str) -> RequestOutput:
    lps = [{t: Logprob(lp, rank=1)} for t, lp in zip(tokens, logps)]
    out = CompletionOutput(0, "", tokens, sum(logps), lps, reason, tokens[-1] if reason == "stop" else None)
    return RequestOutput("r", None, [3], None, [out])


class FakeSamplingParams:  # records the kwargs like vllm.SamplingParams(**kwargs) would receive them
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs


class FakeLLM:
    """The surface of vllm.LLM the engine uses, recording every call."""

    def __init__(self, replies: list[list[RequestOutput]] | None = None, mode: str = "processed_logprobs") -> None:
        self.model_config = SimpleNamespace(logprobs_mode=mode)
        self.replies = replies or []
        self.generate_calls: list[tuple[list[dict], list[FakeSamplingParams], dict]] = []
        self.rpc_calls: list[tuple[str, dict]] = []
        self.prefix_resets = 0

    def generate(self, prompts, sampling_params, **kwargs):
        self.generate_calls.append((prompts, sampling_params, kwargs))
        return self.replies.pop(0)

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        self.rpc_calls.append((method, kwargs or {}))
        return [None]

    def reset_prefix_cache(self, *args, **kwargs):
        self.prefix_resets += 1
        return True


def test_sampling_parameters_map_one_to_one() -> None:
    kw = vllm_sampling_kwargs(SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=321), stop_ids=STOP, seed=5)
    assert kw == {"n": 1, "temperature": 0.7, "top_p": 0.9, "max_tokens": 321, "stop_token_ids": [1, 7],
                  "ignore_eos": False, "logprobs": 0, "detokenize": False, "skip_special_tokens": False, "seed": 5}


def test_outputs_convert_to_a_padded_rollout_batch() -> None:
    outputs = [completion([5, 6, 1], [-0.5, -1.0, -0.25], "stop"), completion([4, 4, 4, 4], [-0.1] * 4, "length"),
               completion([7], [-2.0], "stop")]
    batch = to_rollout_batch(outputs, pad_id=PAD, stop_ids=STOP)
    assert batch.tokens_BT.tolist() == [[5, 6, 1, 0], [4, 4, 4, 4], [7, 0, 0, 0]]
    assert batch.lengths_B.tolist() == [3, 4, 1]
    assert batch.finish_reasons == ["eos", "length", "eos"]
    torch.testing.assert_close(batch.logp_BT, torch.tensor([[-0.5, -1.0, -0.25, 0], [-0.1] * 4, [-2.0, 0, 0, 0]]))
    assert batch.token_lists() == [[5, 6, 1], [4, 4, 4, 4], [7]]


def test_logprob_entries_with_extra_top_tokens_pick_the_sampled_one() -> None:
    out = completion([5, 1], [-0.3, -0.2], "stop")
    out.outputs[0].logprobs[0] = {9: Logprob(-0.01, rank=1), 5: Logprob(-0.3, rank=2)}  # sampled token not top-1
    assert to_rollout_batch([out], pad_id=PAD, stop_ids=STOP).logp_BT[0, 0] == pytest.approx(-0.3)


@pytest.mark.parametrize("mutate, message", [
    (lambda o: setattr(o.outputs[0], "finish_reason", "abort"), "finished with 'abort'"),
    (lambda o: setattr(o.outputs[0], "token_ids", [5, 6]), "stopped on token 6"),
    (lambda o: setattr(o.outputs[0], "logprobs", None), "0 log-prob entries"),
    (lambda o: o.outputs[0].logprobs.__setitem__(1, {}), "no log-prob for the sampled token"),
    (lambda o: o.outputs.append(o.outputs[0]), "expected 1 completion"),
])
def test_bad_outputs_are_one_line_errors(mutate, message: str) -> None:
    out = completion([5, 6, 1], [-0.5, -1.0, -0.25], "stop")
    mutate(out)
    with pytest.raises(OpdwatchError, match=message):
        to_rollout_batch([out], pad_id=PAD, stop_ids=STOP)


def test_launch_arguments_one_process_and_torchrun() -> None:
    assert launch_kwargs(1, model="m", seed=0) == {"logprobs_mode": "processed_logprobs", "model": "m", "seed": 0}
    dp = launch_kwargs(4, model="m")
    assert dp["distributed_executor_backend"] == "external_launcher"
    assert (dp["tensor_parallel_size"], dp["data_parallel_size"]) == (1, 4)
    assert launch_kwargs(4, tensor_parallel_size=2)["tensor_parallel_size"] == 2  # explicit kwargs win


def test_engine_refuses_raw_logprobs_mode() -> None:
    with pytest.raises(OpdwatchError, match="processed_logprobs"):
        VLLMEngine(FakeLLM(mode="raw_logprobs"), stop_ids=STOP, pad_id=PAD)


def test_generate_sends_token_prompts_and_per_row_seeds() -> None:
    llm = FakeLLM([[completion([5, 1], [-0.5, -0.2], "stop"), completion([6, 6], [-1.0, -1.0], "length")]])
    engine = VLLMEngine(llm, stop_ids=STOP, pad_id=PAD, seed=10, sampling_params_cls=FakeSamplingParams)
    batch = engine.generate([[3, 4], [5]], SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=2))
    prompts, params, kwargs = llm.generate_calls[0]
    assert prompts == [{"prompt_token_ids": [3, 4]}, {"prompt_token_ids": [5]}]
    assert [p.kwargs["seed"] for p in params] == [10, 11]
    assert all(p.kwargs["top_p"] == 0.95 and p.kwargs["max_tokens"] == 2 for p in params)
    assert kwargs == {"use_tqdm": False}
    assert batch.finish_reasons == ["eos", "length"]
    assert llm.rpc_calls == []  # no student attached: nothing to sync
    # data parallel: this rank holds global rows 5 and 2 of the step; the seeds follow them, for that call only
    llm.replies = [[completion([1], [-0.1], "stop")] * 2, [completion([1], [-0.1], "stop")] * 2]
    engine.generate([[3], [4]], SamplingParams(), rows=RowIndex((5, 2), 8))
    assert [p.kwargs["seed"] for p in llm.generate_calls[1][1]] == [10 + 1_000_003 + 5, 10 + 1_000_003 + 2]
    engine.generate([[3], [4]], SamplingParams())
    assert [p.kwargs["seed"] for p in llm.generate_calls[2][1]] == [10 + 2 * 1_000_003, 10 + 2 * 1_000_003 + 1]


def test_weights_sync_only_after_the_student_changed() -> None:
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    student.register_buffer("not_a_weight", torch.zeros(1))
    llm = FakeLLM([[completion([1], [-0.1], "stop")] for _ in range(3)])
    engine = VLLMEngine(llm, stop_ids=STOP, pad_id=PAD, student=student, sampling_params_cls=FakeSamplingParams)
    params = SamplingParams(max_new_tokens=4)
    engine.generate([[3]], params)
    assert llm.rpc_calls == [] and engine.syncs == 0  # vLLM loaded the same checkpoint as the student

    opt = torch.optim.Adam(student.parameters(), lr=0.1)
    before = parameter_version(student)
    student(torch.randn(2, 3)).sum().backward()
    opt.step()
    assert parameter_version(student) != before
    engine.generate([[3]], params)
    method, kwargs = llm.rpc_calls[-1]
    assert method == "reload_weights" and kwargs["is_checkpoint_format"] is True
    sent = dict(kwargs["weights_iterator"])
    assert set(sent) == {n for n, _ in student.named_parameters()}  # parameters only, HF-style names
    for name, p in student.named_parameters():
        assert torch.equal(sent[name], p.detach())
    assert llm.prefix_resets == 1 and engine.syncs == 1

    engine.generate([[3]], params)  # no update in between: no second sync
    assert engine.syncs == 1
    assert engine.sync_weights(force=True) and engine.syncs == 2 and llm.prefix_resets == 2


def test_logprobs_are_passed_through_unchanged() -> None:
    """The conversion keeps vLLM's processed log-probs untouched: sum of row log-probs = cumulative_logprob."""
    out = completion([5, 6, 1], [-0.5, -1.0, -0.25], "stop")
    batch = to_rollout_batch([out], pad_id=PAD, stop_ids=STOP)
    assert math.isclose(float(batch.logp_BT.sum()), out.outputs[0].cumulative_logprob, rel_tol=1e-6)


# --------------------------------------------------------------------------------------- real vLLM (GPU)
@pytest.mark.gpu
def test_real_vllm_generates_and_syncs_weights(tmp_path) -> None:
    vllm = pytest.importorskip("vllm")
    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a CUDA GPU")
    from transformers import LlamaConfig, LlamaForCausalLM

    from opdwatch.trainer.recipes.demo.tokenizer import build_char_tokenizer
    from opdwatch.trainer.rollout.sampling import sampling_logp

    tok = build_char_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=4, intermediate_size=128,
                                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    engine = VLLMEngine.launch(str(tmp_path / "m"), stop_ids=[tok.eos_token_id], pad_id=tok.pad_token_id,
                               student=model, seed=0, dtype="float32", gpu_memory_utilization=0.2,
                               enforce_eager=True)
    assert isinstance(engine.llm, vllm.LLM)
    prompts = [tok("Q:1+2=?", add_special_tokens=False)["input_ids"]] * 4
    params = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=16)
    batch = engine.generate(prompts, params)
    assert batch.tokens_BT.shape[0] == 4 and set(batch.finish_reasons) <= {"eos", "length"}
    # processed log-probs agree with our own top-p distribution on the first response token
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(prompts[:1])).logits[:, -1]
    want = sampling_logp(logits, temperature=1.0, top_p=0.9)[0, batch.tokens_BT[0, 0]]
    assert float(batch.logp_BT[0, 0]) == pytest.approx(float(want), abs=1e-3)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)  # in place: bumps the version counters
    engine.generate(prompts, params)
    assert engine.syncs == 1
