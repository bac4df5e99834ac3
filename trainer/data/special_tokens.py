"""Special-token masking: chat-template and other special tokens never receive loss.

"Revisiting OPD" found that special tokens distort the one-token OPD signal: a teacher with another chat template
(or another tokenizer's specials) assigns them arbitrary log-probs, and their advantages are large and
meaningless. We take them out of the loss mask; the recorder then writes `loss_mask = False` and `special = True`
for them (pass the same ids as `tokenizer_info["special_token_ids"]`).

The stop token is the exception by default: stopping is the decision the paper's collapse is about, so EOS stays
in the loss after EOS canonicalisation (data.eos_canon) made the teacher score it as its own EOS.
Shapes: B rollouts, T response positions.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def special_token_ids(tokenizer) -> list[int]:
    """Ids of every special token of a transformers tokenizer: the named ones (bos/eos/pad/unk/...) and the added
    tokens flagged special (chat-template markers such as <|im_start|>, <think>), sorted."""
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for token_id, added in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(added, "special", False):
            ids.add(int(token_id))
    return sorted(ids)


def special_mask(tokens_BT: torch.Tensor, special_ids: Iterable[int]) -> torch.Tensor:
    """(B, T) bool: True where the token is one of `special_ids`."""
    ids = torch.as_tensor(sorted(set(special_ids)), dtype=tokens_BT.dtype, device=tokens_BT.device)
    return torch.isin(tokens_BT, ids)


def mask_special_tokens(tokens_BT: torch.Tensor, mask_BT: torch.Tensor, special_ids: Iterable[int], *,
                        keep_ids: Iterable[int] = ()) -> torch.Tensor:
    """The loss mask with special-token positions zeroed, except tokens in `keep_ids` (e.g. the stop tokens).

    tokens_BT: (B, T) int; mask_BT: (B, T) float/bool (1 on response tokens). Returns (B, T) of mask_BT's dtype.
    """
    drop = set(special_ids) - set(keep_ids)
    if not drop:
        return mask_BT.clone()
    return mask_BT.masked_fill(special_mask(tokens_BT, drop), 0)
