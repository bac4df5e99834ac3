"""Everything a run needs, built from the config: tokenizer, data splits, student/teacher/reference, engine.

A `models.student` / `models.teacher` value is a local path or hub id, or the name of a model source in
MODEL_SOURCES that makes a local model directory first. The one source today is the demo recipe
(`demo`: tiny models trained on first use and cached); it is imported only when a run names it, so real runs
never load the recipe. Either way the model is loaded through the same `from_pretrained` path.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel

from opdwatch.errors import OpdwatchError
from opdwatch.trainer.config import TrainConfig
from opdwatch.trainer.data.eos_canon import TokenMapping, resolve_mapping
from opdwatch.trainer.data.models import load_causal_lm, load_tokenizer
from opdwatch.trainer.data.special_tokens import special_token_ids
from opdwatch.trainer.data.task import Splits, make_splits
from opdwatch.trainer.parallel.fsdp import RolloutCopy


@dataclass
class Components:
    tokenizer: object  # a transformers tokenizer with eos/pad ids
    splits: Splits
    student: PreTrainedModel  # trained
    teacher: PreTrainedModel  # frozen
    reference: PreTrainedModel  # frozen: the initial student unless models.reference names a path
    mapping: TokenMapping | None = None  # student -> teacher ids and the stop ids (data.eos_canon)
    special_ids: tuple[int, ...] = ()  # the student tokenizer's special tokens (masked from the loss if asked)
    # set by parallel.fsdp when the student is sharded: the unsharded copy the hf engine samples from
    rollout_copy: RolloutCopy | None = None
    # False once the student in memory differs from its files (SFT warm-up): a vLLM engine must sync first
    student_matches_files: bool = True
    student_path: str = ""  # the directory (or hub id) the student was loaded from: a vLLM engine loads it too

    @property
    def rollout_student(self) -> PreTrainedModel:
        """The model rollouts are sampled from: the student, or its unsharded copy under FSDP."""
        return self.student if self.rollout_copy is None else self.rollout_copy.model


def _demo_model(config: TrainConfig, role: str) -> Path:
    # imported on use: a run with real models never loads the demo recipe (its tokenizer, tiny models, training)
    from opdwatch.trainer.recipes.demo.demo_teacher import ensure_demo_model

    return ensure_demo_model(config, role)


# Values of models.student / models.teacher that name a model source instead of a path or hub id: each makes
# (or finds in its cache) the local model directory of (config, role)
MODEL_SOURCES: dict[str, Callable[[TrainConfig, str], Path]] = {"demo": _demo_model}


def model_path(config: TrainConfig, role: str) -> str:
    """The path or hub id `role` ("student" or "teacher") is loaded from."""
    name = getattr(config.models, role)
    source = MODEL_SOURCES.get(name)
    return name if source is None else str(source(config, role))


def build_components(config: TrainConfig) -> Components:
    if config.data.source != "synthetic" and "demo" in (config.models.student, config.models.teacher):
        raise OpdwatchError(
            "demo models only know the synthetic task: set data.source=synthetic or real models"
        )
    student_path = model_path(config, "student")
    teacher_path = model_path(config, "teacher")
    tokenizer = load_tokenizer(student_path)
    # Checked before any model loads. Student and teacher must share ordinary token ids; a different EOS or
    # special tokens need a mapping (the paper's reader comment: mismatched EOS ids caused non-termination
    # until both were mapped to one stop event).
    mapping = resolve_mapping(tokenizer, load_tokenizer(teacher_path), config.tokens.eos_map)
    student = load_causal_lm(student_path, trainable=True)
    teacher = load_causal_lm(teacher_path, trainable=False)
    if config.models.reference == "student":
        reference = copy.deepcopy(student).requires_grad_(False)
    else:
        reference = load_causal_lm(config.models.reference, trainable=False)
    return Components(tokenizer, make_splits(config.data), student, teacher, reference, mapping,
                      tuple(special_token_ids(tokenizer)), student_path=student_path)


def tokenizer_info(tokenizer, mapping: TokenMapping | None = None) -> dict[str, object]:
    """What the recorder needs: every stop id (EOS flags), the special ids (`special` column), the EOS mapping."""
    return {
        "name": getattr(tokenizer, "name_or_path", ""),
        "eos_token_ids": list(mapping.student_stop_ids) if mapping else [tokenizer.eos_token_id],
        "pad_token_id": tokenizer.pad_token_id,
        "special_token_ids": special_token_ids(tokenizer),
        "vocab_size": len(tokenizer),
        "eos_mapping": mapping.to_dict() if mapping else None,
    }


@torch.no_grad()
def params_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
