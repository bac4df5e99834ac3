"""Everything a run needs, built from the config: tokenizer, data splits, student/teacher/reference, engine.

Demo models (`models.student: demo`, `models.teacher: demo`) are trained on first use and cached, then loaded
through the same `from_pretrained` path as any other model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from opdwatch.errors import OpdwatchError
from trainer.config import TrainConfig
from trainer.data import Splits, make_splits
from trainer.demo_teacher import ensure_demo_model
from trainer.eos_canon import TokenMapping, resolve_mapping
from trainer.fsdp import RolloutCopy
from trainer.models import load_causal_lm, load_tokenizer
from trainer.special_tokens import special_token_ids


@dataclass
class Components:
    tokenizer: object  # a transformers tokenizer with eos/pad ids
    splits: Splits
    student: PreTrainedModel  # trained
    teacher: PreTrainedModel  # frozen
    reference: PreTrainedModel  # frozen: the initial student unless models.reference names a path
    mapping: TokenMapping | None = None  # student -> teacher ids and the stop ids (trainer.eos_canon)
    special_ids: tuple[int, ...] = ()  # the student tokenizer's special tokens (masked from the loss if asked)
    # set by trainer.fsdp when the student is sharded: the unsharded copy the hf engine samples from
    rollout_copy: RolloutCopy | None = None
    # False once the student in memory differs from its files (SFT warm-up): a vLLM engine must sync first
    student_matches_files: bool = True

    @property
    def rollout_student(self) -> PreTrainedModel:
        """The model rollouts are sampled from: the student, or its unsharded copy under FSDP."""
        return self.student if self.rollout_copy is None else self.rollout_copy.model


def model_path(config: TrainConfig, role: str) -> str:
    name = getattr(config.models, role)
    return str(ensure_demo_model(config, role)) if name == "demo" else name


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
                      tuple(special_token_ids(tokenizer)))


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
