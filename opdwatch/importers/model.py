"""What a format reader hands the shared writer: one framework's run, step by step, in the framework's terms.

A reader only parses files. It keeps the framework's metric names as they are (``StepData.metrics``) and the
per-rollout facts the files hold (``Rollouts``: tokens, log-probs, mask, how each rollout ended; or only
texts). The writer (:mod:`opdwatch.importers.writer`) maps names, recomputes what the records allow and
compares, so every format gets the same rules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class MetricRule:
    pattern: str                     # regex, full match on the framework's metric name (after prefix stripping)
    target: str                      # our step-metric key (opdwatch.metric_defs)
    source: str                      # the framework file that writes the metric (cited in docs/integrations.md)
    transform: Callable[[float], float] = float  # framework value -> our unit/sign
    note: str = ""                   # how the framework's definition differs from ours, if it does


@dataclass(frozen=True)
class Framework:
    name: str                        # also the prefix its own metric names are stored under: "verl/..."
    rules: tuple[MetricRule, ...]    # first matching rule per target wins
    signature: tuple[str, ...]       # regexes of metric names only this framework logs (wandb recognition)
    wandb_step_keys: tuple[str, ...] = ()  # history keys that carry the framework's own step, before `_step`
    other_clocks: tuple[str, ...] = ()     # step keys of rows on another counter (left out, said in the report)
    strip_prefix: str = ""           # a prefix its logger adds in wandb (transformers: "train/")


@dataclass
class Rollouts:
    """One step's rollouts with token records: ragged per-rollout arrays."""

    token_ids: list[np.ndarray]                  # (T_i,) response tokens
    finish_reasons: list[str]                    # "eos" | "length", from the framework's per-rollout facts
    texts: list[str]
    student_logp: list[np.ndarray] | None = None  # (T_i,) log pi_student of the sampled tokens (rollout engine)
    teacher_logp: list[np.ndarray] | None = None  # (T_i,)
    loss_mask: list[np.ndarray] | None = None     # (T_i,) bool
    prompt_texts: list[str | None] | None = None

    def __len__(self) -> int:
        return len(self.token_ids)


@dataclass
class StepData:
    step: int
    phase: str = "train"
    metrics: dict[str, float] = field(default_factory=dict)  # the framework's names, numeric values only
    rollouts: Rollouts | None = None                          # token records, if the files have them
    texts: list[str] | None = None                            # response texts only (no tokens, no finish)


@dataclass
class ImportedRun:
    framework: Framework
    source: Path
    steps: dict[tuple[int, str], StepData] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)       # the framework's config, where the files have it
    warnings: list[str] = field(default_factory=list)          # what was unreadable; printed as one line
    findings: list[str] = field(default_factory=list)          # format-specific checks (e.g. verl's clip ratio)
    matched: str | None = None                                 # wandb: which framework's names matched, and why
    files: list[str] = field(default_factory=list)             # what was read

    def step(self, step: int, phase: str = "train") -> StepData:
        key = (int(step), phase)
        if key not in self.steps:
            self.steps[key] = StepData(int(step), phase)
        return self.steps[key]


@dataclass(frozen=True)
class ImportOptions:
    # Token ids that end a rollout by choice (EOS). Given, an import with token records recomputes each
    # rollout's finish from its tokens (ended on one of these: "eos", else "length") instead of trusting the
    # framework's per-rollout status.
    eos_token_ids: tuple[int, ...] = ()
    # A second file set with the step metrics, for formats whose own files carry none (slime's dumps, NeMo-RL's
    # train-data JSONL): a wandb run file or folder, or a JSONL of {"step": N, ...} rows.
    metrics: Path | None = None
    # verl: its trainer.rollout_data_dir (generation dumps {step}.jsonl), read beside the metrics file.
    rollouts: Path | None = None
    # The generation budget (verl: data.max_response_length); lets an import check the framework's
    # clip ratio against the budget rather than against the batch's padded width.
    max_response_length: int | None = None
    # slime's dumps are torch.save pickles: loaded with weights_only=True unless the user trusts the file.
    allow_pickle: bool = False
    # wandb: take this framework's names instead of recognising them (a Framework.name).
    framework: str | None = None
    # wandb: read a file written by a wandb version outside the checked range (at the user's risk).
    any_wandb_version: bool = False
    # Repetition rule, as opdwatch.recorder.RecorderSettings (defaults: slime's 10,000 characters, ratio 0.1).
    tail_window: int = 10_000
    tail_threshold: float = 0.1
