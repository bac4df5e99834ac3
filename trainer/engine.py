"""The rollout-engine interface: anything that samples responses with per-token sampling log-probs.

The loop only talks to this Protocol, so a vLLM/SGLang engine can replace `HFEngine` on a cluster.
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


class RolloutEngine(Protocol):
    def generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> RolloutBatch: ...
