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
from trainer.models import load_causal_lm, load_tokenizer


@dataclass
class Components:
    tokenizer: object  # a transformers tokenizer with eos/pad ids
    splits: Splits
    student: PreTrainedModel  # trained
    teacher: PreTrainedModel  # frozen
    reference: PreTrainedModel  # frozen: the initial student unless models.reference names a path


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
    student = load_causal_lm(student_path, trainable=True)
    teacher = load_causal_lm(teacher_path, trainable=False)
    if config.models.reference == "student":
        reference = copy.deepcopy(student).requires_grad_(False)
    else:
        reference = load_causal_lm(config.models.reference, trainable=False)
    # We assume student and teacher share one vocabulary and EOS (the paper's reader comment: mismatched EOS
    # ids    # caused non-termination until both were mapped to one stop event).
    if teacher.config.vocab_size != student.config.vocab_size:
        raise OpdwatchError(
            f"teacher vocab {teacher.config.vocab_size} != student vocab {student.config.vocab_size}"
        )
    return Components(tokenizer, make_splits(config.data), student, teacher, reference)


def tokenizer_info(tokenizer) -> dict[str, object]:
    return {
        "name": getattr(tokenizer, "name_or_path", ""),
        "eos_token_ids": [tokenizer.eos_token_id],
        "pad_token_id": tokenizer.pad_token_id,
        "special_token_ids": list(tokenizer.all_special_ids),
        "vocab_size": len(tokenizer),
    }


@torch.no_grad()
def params_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
