"""Tiny, fast configs for trainer tests: 1-layer 32-wide demo models (trained for a few steps), 4 prompts x 2
samples, 16-token budget, 1 thread so that results are deterministic on a given machine. Across machines the
last float bits still differ (ATen's SIMD kernels are chosen per CPU, and the demo models are built where the
tests run): test_controller_and_pinned.py says how much, and what its pins tolerate."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from opdwatch.trainer.config import TrainConfig, load_config

TINY = [
    "run.threads=1",
    "run.progress=false",
    "data.sft_size=200",
    "data.opd_size=50",
    "data.val_size=8",
    "demo.student.hidden=32",
    "demo.student.layers=1",
    "demo.student.intermediate=64",
    "demo.student.sft_steps=20",
    "demo.teacher.hidden=32",
    "demo.teacher.layers=1",
    "demo.teacher.intermediate=64",
    "demo.teacher.sft_steps=20",
    "demo.teacher.copy_steps=5",
    # The recipe the tiny teacher has always had: a partial demo.teacher section used to start from the student's
    # defaults (copy_fraction 0.25) instead of the teacher's (0.3). Kept, so the tiny models and the pinned losses
    # of test_controller_and_pinned.py stay what they were.
    "demo.teacher.copy_fraction=0.25",
    "demo.student.batch_size=8",
    "demo.teacher.batch_size=8",
    "rollout.prompts_per_step=4",
    "rollout.samples_per_prompt=2",
    "rollout.max_new_tokens=16",
    "val.every=2",
    "val.num_prompts=8",
    "val.max_new_tokens=16",
    "opd.beta=0.1",
    "opd.alpha=0.5",
]


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("demo-cache")  # shared so the tiny demo models are built once


@pytest.fixture
def tiny_config(tmp_path: Path, model_cache: Path) -> Callable[..., TrainConfig]:
    def make(*overrides: str) -> TrainConfig:
        return load_config(
            None, [*TINY, f"models.cache_dir={model_cache}", f"run.output_dir={tmp_path}", *overrides]
        )

    return make
