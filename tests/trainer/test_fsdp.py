"""parallel.fsdp pieces that run in one process: full state dicts keyed by name, the rollout copy, refusals.

The sharded path itself (2 gloo ranks under torchrun) is tested in test_distributed.py.
"""

from __future__ import annotations

import io

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from opdwatch.errors import OpdwatchError
from opdwatch.trainer.parallel.distributed import DistEnv
from opdwatch.trainer.parallel.fsdp import (
    RolloutCopy,
    decoder_layers,
    full_model_state,
    full_optimizer_state,
    is_sharded,
    load_full_state,
    shard_student,
)


def tiny_llama(seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config)


def adam_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, seed: int) -> None:
    ids = torch.randint(0, 40, (2, 8), generator=torch.Generator().manual_seed(seed))
    optimizer.zero_grad()
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()


def test_decoder_layers_are_the_fsdp_units() -> None:
    model = tiny_llama(0)
    assert decoder_layers(model) == list(model.model.layers) and len(decoder_layers(model)) == 2


def test_name_keyed_state_resumes_an_unsharded_model_exactly() -> None:
    """An FSDP checkpoint (full tensors, Adam state by parameter name) loads into a one-process run: the next
    step is bit-identical to the uninterrupted one."""
    a = tiny_llama(0)
    opt_a = torch.optim.Adam(a.parameters(), lr=1e-2)
    adam_step(a, opt_a, seed=1)
    # through a file, as a checkpoint goes: on CPU the gathered state aliases the live Adam moments
    buffer = io.BytesIO()
    torch.save({"model": full_model_state(a), "optim": full_optimizer_state(a, opt_a)}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    model_state, optim_state = saved["model"], saved["optim"]
    assert set(optim_state["state"]) <= set(model_state)  # keyed by name, not by position
    assert all(isinstance(k, str) for k in optim_state["state"])

    b = tiny_llama(99)  # different initial weights, fresh Adam
    opt_b = torch.optim.Adam(b.parameters(), lr=1e-2)
    load_full_state(b, opt_b, model_state, optim_state)
    adam_step(a, opt_a, seed=2)
    adam_step(b, opt_b, seed=2)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name


def test_rollout_copy_follows_the_student() -> None:
    student = tiny_llama(0)
    copy = RolloutCopy(student)
    assert not any(p.requires_grad for p in copy.model.parameters())
    opt = torch.optim.Adam(student.parameters(), lr=1e-2)
    adam_step(student, opt, seed=3)
    before = copy.model.model.embed_tokens.weight.clone()
    assert not torch.equal(before, student.model.embed_tokens.weight)
    copy.refresh(student)
    assert copy.refreshes == 1
    for (name, x), y in zip(student.state_dict().items(), copy.model.state_dict().values(), strict=True):
        assert torch.equal(x, y), name


def test_fsdp_needs_several_processes() -> None:
    model = tiny_llama(0)
    with pytest.raises(OpdwatchError, match="at least 2 processes"):
        shard_student(model, DistEnv())
    assert not is_sharded(model)
