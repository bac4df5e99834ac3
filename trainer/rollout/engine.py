"""The rollout-engine interface: anything that samples responses with per-token sampling log-probs.

The loop only talks to this Protocol, so a vLLM/SGLang engine can replace `HFEngine` on a cluster. What a call
needs from its caller is an argument of `generate`: the prompts, the sampling parameters and, under data
parallelism, where its rows sit in the step's global batch (`RowIndex`), not an attribute set on the engine first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import torch

FinishReason = Literal["eos", "length"]


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0  # nucleus sampling mass; 1.0 disables it
    max_new_tokens: int = 128  # the generation budget; a rollout that hits it is truncated


@dataclass
class RolloutBatch:
    """B responses, right-padded to T = the longest response.

    tokens_BT: (B, T) int64 response tokens (EOS included when emitted), padded with pad_id
    logp_BT: (B, T) float32 log-prob of each sampled token under the sampling distribution (0 at padding)
    lengths_B: (B,) int64 number of response tokens
    finish_reasons: B x "eos" | "length" ("length" exactly when the budget ran out without EOS)
    """

    tokens_BT: torch.Tensor
    logp_BT: torch.Tensor
    lengths_B: torch.Tensor
    finish_reasons: list[FinishReason]

    def token_lists(self) -> list[list[int]]:
        return [row[:n].tolist() for row, n in zip(self.tokens_BT, self.lengths_B.tolist(), strict=True)]


@dataclass(frozen=True)
class RowIndex:
    """Where the rows of one `generate` call sit in the global batch they belong to.

    numbers: the global row number of each prompt row, in order (prompt-major: prompt p, sample s is p * S + s)
    total: the global row count

    Engines key their per-rollout randomness on the global row number (HFEngine's counter_rng uniforms, vLLM's
    per-request seeds), so a rollout comes out the same whichever rank samples it. None stands for rows
    0..n-1 of n: one process, or validation.
    """

    numbers: tuple[int, ...]
    total: int

    def __post_init__(self) -> None:
        if any(not 0 <= n < self.total for n in self.numbers):
            raise ValueError(f"row numbers must be in [0, {self.total}), got {list(self.numbers)}")


class RolloutEngine(Protocol):
    def generate(
        self, prompt_ids: list[list[int]], params: SamplingParams, *, rows: RowIndex | None = None
    ) -> RolloutBatch:
        """Sample one response per prompt row; `rows` places the rows in the step's global batch."""
        ...
