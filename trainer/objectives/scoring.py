"""Scoring prompt+response sequences with a causal LM: per-token log-probs and full-vocabulary logits.

Layout shared by student, teacher and reference: prompts left-padded to width P, responses right-padded to T,
so response token t of every row sits at column P + t and is predicted by the logits at column P + t - 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from opdwatch.trainer.rollout.hf_engine import left_pad


@dataclass
class SequenceBatch:
    ids_BS: torch.Tensor  # (B, P + T) prompt (left-padded) then response (right-padded)
    attn_BS: torch.Tensor  # (B, P + T) 1 on real tokens
    pos_BS: torch.Tensor  # (B, P + T) position ids, counting real tokens only
    tokens_BT: torch.Tensor  # (B, T) response tokens
    mask_BT: torch.Tensor  # (B, T) float 1.0 on response tokens (EOS included), 0.0 on padding
    prompt_width: int  # P

    def rows(self, index: torch.Tensor) -> SequenceBatch:
        """The sub-batch of rows `index` (same column layout)."""
        return SequenceBatch(
            self.ids_BS[index],
            self.attn_BS[index],
            self.pos_BS[index],
            self.tokens_BT[index],
            self.mask_BT[index],
            self.prompt_width,
        )


def build_sequences(prompt_ids: list[list[int]], responses: list[list[int]], pad_id: int) -> SequenceBatch:
    prompt_BP, prompt_mask_BP = left_pad(prompt_ids, pad_id)
    T = max(1, max(len(r) for r in responses))
    tokens_BT = torch.full((len(responses), T), pad_id, dtype=torch.long)
    mask_BT = torch.zeros((len(responses), T), dtype=torch.float32)
    for i, r in enumerate(responses):
        tokens_BT[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask_BT[i, : len(r)] = 1.0
    attn_BS = torch.cat([prompt_mask_BP, mask_BT.long()], dim=1)
    pos_BS = (attn_BS.cumsum(dim=1) - 1).clamp(min=0)
    return SequenceBatch(
        torch.cat([prompt_BP, tokens_BT], dim=1), attn_BS, pos_BS, tokens_BT, mask_BT, prompt_BP.shape[1]
    )


def response_logits(model: PreTrainedModel, seq: SequenceBatch) -> torch.Tensor:
    """Logits predicting each response token: (B, T, V) float32."""
    logits_BSV = model(input_ids=seq.ids_BS, attention_mask=seq.attn_BS, position_ids=seq.pos_BS).logits
    T, P = seq.tokens_BT.shape[1], seq.prompt_width
    return logits_BSV[:, P - 1 : P - 1 + T].float()


def token_logp(logits_BTV: torch.Tensor, tokens_BT: torch.Tensor) -> torch.Tensor:
    """log-softmax of the logits at the given tokens: (B, T, V), (B, T) -> (B, T)."""
    return torch.log_softmax(logits_BTV, dim=-1).gather(2, tokens_BT[..., None]).squeeze(2)
