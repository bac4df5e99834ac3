"""Rollout engines by name (config `engine.kind`): each builder returns a `RolloutEngine` for the run's student.

    ENGINES["hf"]    transformers forward loop with a KV cache (CPU or GPU), rollout/hf_engine.py
    ENGINES["vllm"]  vLLM on a GPU with per-step weight sync from the student, rollout/vllm_engine.py (optional
                     extra: vllm itself is imported only when the engine launches)

Builders take the config and the run's `Components` (typed Any: the loop's components module sits above this one).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from opdwatch.trainer.rollout.hf_engine import HFEngine
from opdwatch.trainer.rollout.vllm_engine import VLLMEngine


def build_hf(config: Any, components: Any, generator: torch.Generator) -> HFEngine:
    tok = components.tokenizer
    return HFEngine(components.rollout_student, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, generator=generator,
                    stop_ids=components.mapping.student_stop_ids, counter_rng=config.rollout.counter_rng,
                    fast=config.engine.fast_decode)


def build_vllm(config: Any, components: Any, generator: torch.Generator) -> VLLMEngine:
    # vLLM loads the student's own files (components.student_path) and gets its weights pushed after updates
    return VLLMEngine.launch(components.student_path, stop_ids=components.mapping.student_stop_ids,
                             pad_id=components.tokenizer.pad_token_id, student=components.student,
                             seed=config.run.seed, synced=components.student_matches_files,
                             dtype=config.engine.dtype, gpu_memory_utilization=config.engine.gpu_memory_utilization)


ENGINES: dict[str, Callable[[Any, Any, torch.Generator], Any]] = {"hf": build_hf, "vllm": build_vllm}
