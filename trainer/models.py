"""Loading student, teacher and reference with `AutoModelForCausalLM.from_pretrained`; tiny demo models.

Every model, demo or real, goes through `load_causal_lm(path)`; the demo only differs in that its
directories are created (and cached) first by `trainer.demo_teacher`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedModel
from transformers.utils import logging as hf_logging

from opdwatch.errors import OpdwatchError


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
    """A randomly initialised Llama-architecture model (demo student ~0.1M parameters, teacher ~0.9M)."""
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


def load_causal_lm(path: str, *, trainable: bool) -> PreTrainedModel:
    """Load a local directory or hub id in float32 (CPU); frozen models are put in eval mode without grads."""
    hf_logging.disable_progress_bar()  # its per-tensor bars would bury ours
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise OpdwatchError(f"cannot load model {path!r}: {str(exc).splitlines()[0]}") from exc
    model.requires_grad_(trainable)
    model.eval()  # eval mode for all three: OPD scores pi_old and pi_theta identically (no dropout noise)
    return model


def load_tokenizer(path: str):
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise OpdwatchError(f"cannot load tokenizer {path!r}: {str(exc).splitlines()[0]}") from exc
    if tokenizer.eos_token_id is None:
        raise OpdwatchError(f"tokenizer {path!r} has no EOS token")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # padding positions are always masked out
    return tokenizer


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_model_dir(model: PreTrainedModel, tokenizer, path: Path) -> None:
    hf_logging.disable_progress_bar()
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
