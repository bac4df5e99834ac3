"""Loading student, teacher and reference with `AutoModelForCausalLM.from_pretrained`, and saving a model directory.

Every model, demo or real, goes through `load_causal_lm(path)`; the demo only differs in that its
directories are created (and cached) first by its recipe (recipes.demo.demo_teacher).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.utils import logging as hf_logging

from opdwatch.errors import OpdwatchError


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
