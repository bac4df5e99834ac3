"""Rollouts from a transformers causal LM: a plain sampling loop over `model.forward` with its KV cache.

We avoid `model.generate`: on tiny CPU models its per-step overhead (logits processors, stopping criteria,
cache bookkeeping) dominates; a bare loop was ~2-3x faster (benchmarks/rollout_throughput.py).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, PreTrainedModel

from trainer.engine import FinishReason, RolloutBatch, SamplingParams


def left_pad(prompt_ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad prompts so every row's last prompt token sits in the same column.

    Returns ids_BP (B, P) int64 and mask_BP (B, P) int64 (1 for real tokens).
    """
    width = max(len(p) for p in prompt_ids)
    ids_BP = torch.full((len(prompt_ids), width), pad_id, dtype=torch.long)
    mask_BP = torch.zeros((len(prompt_ids), width), dtype=torch.long)
    for i, p in enumerate(prompt_ids):
        ids_BP[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask_BP[i, width - len(p) :] = 1
    return ids_BP, mask_BP


def sample_next(
    logits_BV: torch.Tensor, params: SamplingParams, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row; returns (token_B, logp_B), logp under the distribution sampled from."""
    if params.temperature <= 0:
        logp_BV = torch.log_softmax(logits_BV.float(), dim=-1)
        token_B = logp_BV.argmax(dim=-1)
        return token_B, logp_BV.gather(1, token_B[:, None]).squeeze(1)
    logp_BV = torch.log_softmax(logits_BV.float() / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_BV, order_BV = logp_BV.sort(dim=-1, descending=True)
        mass_before_BV = sorted_BV.exp().cumsum(dim=-1) - sorted_BV.exp()
        sorted_BV = sorted_BV.masked_fill(mass_before_BV >= params.top_p, float("-inf"))
        logp_BV = torch.full_like(logp_BV, float("-inf")).scatter(1, order_BV, sorted_BV)
        logp_BV = torch.log_softmax(logp_BV, dim=-1)
    token_B = torch.multinomial(logp_BV.exp(), 1, generator=generator).squeeze(1)
    return token_B, logp_BV.gather(1, token_B[:, None]).squeeze(1)


class HFEngine:
    """`RolloutEngine` on a transformers model; `generator` makes sampling reproducible (and checkpointable)."""

    def __init__(
        self, model: PreTrainedModel, *, eos_id: int, pad_id: int, generator: torch.Generator | None = None
    ):
        self.model = model
        self.eos_id = eos_id
        self.pad_id = pad_id
        self.generator = generator

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> RolloutBatch:
        ids_BP, mask_BP = left_pad(prompt_ids, self.pad_id)
        B = ids_BP.shape[0]
        pos_BP = (mask_BP.cumsum(dim=1) - 1).clamp(min=0)
        cache = DynamicCache()
        out = self.model(
            input_ids=ids_BP,
            attention_mask=mask_BP,
            position_ids=pos_BP,
            past_key_values=cache,
            use_cache=True,
        )
        logits_BV = out.logits[:, -1]
        mask_BS, next_pos_B = mask_BP, pos_BP[:, -1] + 1
        tokens, logps = [], []
        done_B = torch.zeros(B, dtype=torch.bool)
        lengths_B = torch.zeros(B, dtype=torch.long)
        for _ in range(params.max_new_tokens):
            token_B, logp_B = sample_next(logits_BV, params, self.generator)
            token_B = token_B.masked_fill(done_B, self.pad_id)
            tokens.append(token_B)
            logps.append(logp_B.masked_fill(done_B, 0.0))
            lengths_B += (~done_B).long()
            done_B |= token_B == self.eos_id
            if bool(done_B.all()):
                break
            mask_BS = torch.cat([mask_BS, torch.ones((B, 1), dtype=torch.long)], dim=1)
            out = self.model(
                input_ids=token_B[:, None],
                attention_mask=mask_BS,
                position_ids=next_pos_B[:, None],
                past_key_values=out.past_key_values,
                use_cache=True,
            )
            logits_BV = out.logits[:, -1]
            next_pos_B = next_pos_B + 1
        tokens_BT = torch.stack(tokens, dim=1)
        finish: list[FinishReason] = ["eos" if d else "length" for d in done_B.tolist()]
        return RolloutBatch(
            tokens_BT=tokens_BT, logp_BT=torch.stack(logps, dim=1), lengths_B=lengths_B, finish_reasons=finish
        )
