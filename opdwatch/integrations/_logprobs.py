"""Log-probabilities of the sampled tokens only, from logits or from hidden states, a chunk of positions at a time.

A trainer's loss already holds the (B, T, V) logits (GKD, GOLD) or only the (B, T, H) hidden states
(DistillationTrainer, which projects them through the output embedding tile by tile). Either way opdwatch needs
one number per sampled token, log p(y_t | s_t), so it never builds a (B, T, V) tensor of its own: it takes the
valid positions, projects (hidden states) or slices (logits) ``chunk`` positions at a time, applies the same
post-processing the loss applies (scale, soft-capping, temperature), takes the log-softmax over V and keeps the
sampled token's entry. Peak extra memory is (chunk, V) floats. No gradients flow (all under ``no_grad``).

torch is imported inside the functions: the opdwatch core imports without torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

CHUNK = 1024  # positions per log-softmax: (1024, V) floats, 600 MB at V = 152k in float32


@dataclass(frozen=True)
class LogitPost:
    # What a loss does to raw logits before its softmax, in this order (TRL's _chunked_divergence_loss)
    scale: float = 1.0  # multiplier (Cohere-style logit_scale)
    softcap: float | None = None  # softcap * tanh(logits / softcap) (Gemma-style final_logit_softcapping)
    temperature: float = 1.0  # logits / temperature

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if self.scale != 1.0:
            logits = logits * self.scale
        if self.softcap is not None:
            logits = self.softcap * logits.div(self.softcap).tanh()
        return logits / self.temperature if self.temperature != 1.0 else logits


def _gather(rows_of: Any, ids_N: torch.Tensor, post: LogitPost, chunk: int) -> torch.Tensor:
    """(N,) float32: log-softmax of ``rows_of(lo, hi)`` ((hi - lo, V) logits) at ``ids_N[lo:hi]``."""
    import torch

    out_N = torch.empty(ids_N.shape[0], dtype=torch.float32, device=ids_N.device)
    for lo in range(0, ids_N.shape[0], chunk):
        hi = min(lo + chunk, ids_N.shape[0])
        logits_CV = post.apply(rows_of(lo, hi).float())  # (C, V)
        out_N[lo:hi] = torch.log_softmax(logits_CV, dim=-1).gather(-1, ids_N[lo:hi, None])[:, 0]
    return out_N


def sampled_logp_from_logits(logits_BTV: torch.Tensor, ids_BT: torch.Tensor, valid_BT: torch.Tensor, *,
                             post: LogitPost = LogitPost(), chunk: int = CHUNK) -> torch.Tensor:
    """(N,) log p(ids_BT[b, t]) at the N positions where ``valid_BT`` is true, in row-major order.

    ``logits_BTV`` (B, T, V) already aligned with ``ids_BT`` (B, T) (logits at t predict the token at t)."""
    import torch

    with torch.no_grad():
        b_N, t_N = valid_BT.nonzero(as_tuple=True)
        ids_N = ids_BT[b_N, t_N].long()
        logits = logits_BTV.detach()
        return _gather(lambda lo, hi: logits[b_N[lo:hi], t_N[lo:hi]], ids_N, post, chunk)


def sampled_logp_from_hidden(hidden_BTH: torch.Tensor, head: Any, ids_BT: torch.Tensor, valid_BT: torch.Tensor, *,
                             post: LogitPost = LogitPost(), chunk: int = CHUNK) -> torch.Tensor:
    """(N,) log p(ids_BT[b, t]) from hidden states (B, T, H) and the output embedding ``head`` (a module
    mapping (C, H) -> (C, V), e.g. ``model.get_output_embeddings()``), at the positions where ``valid_BT``."""
    import torch

    with torch.no_grad():
        b_N, t_N = valid_BT.nonzero(as_tuple=True)
        ids_N = ids_BT[b_N, t_N].long()
        hidden = hidden_BTH.detach()
        return _gather(lambda lo, hi: head(hidden[b_N[lo:hi], t_N[lo:hi]].to(head.weight.dtype)), ids_N, post,
                       chunk)
