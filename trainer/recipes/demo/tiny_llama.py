"""The demo's model architecture: a randomly initialised, tiny Llama (demo student ~0.1M parameters, teacher ~0.9M).

Part of the demo recipe rather than of trainer/data/models.py: real runs load their models from a path or hub id
and never build one from scratch. Tests and benchmarks use it as a small model of a real architecture.
"""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def tiny_llama(
    *,
    vocab_size: int,
    hidden: int,
    layers: int,
    heads: int,
    intermediate: int,
    max_len: int,
    pad_id: int,
    eos_id: int,
    seed: int,
) -> LlamaForCausalLM:
    """A randomly initialised float32 Llama-architecture model, its weights drawn from `seed`."""
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=max_len,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    return model.to(torch.float32)
