"""Teacher top-K local support matching: reverse KL truncated to the teacher's top-K tokens (pure functions).

"Revisiting OPD" (arXiv 2603.25562) replaces the one-token sampled signal log pi_T(y_t) - log pi_theta(y_t) with a
distribution match at every visited prefix s_t, restricted to where the teacher is reliable: its K most likely
tokens S_t. Both distributions are renormalised over S_t and the student minimises

    KL_t = sum_{a in S_t} p~_theta(a|s_t) * (log p~_theta(a|s_t) - log p~_T(a|s_t)),
    p~(a|s_t) = pi(a|s_t) / sum_{b in S_t} pi(b|s_t).

The gradient flows through the student's logits at the K support tokens (and through their normaliser). The
teacher only has to hand over K ids and K log-probs per position, so teacher scoring can drop its (B, T, V)
logits straight after `teacher_topk` (memory stays O(B * T * K) between teacher scoring and the update).

Shapes: B rollouts, T response positions, V vocabulary, K support size. `mask_BT` is 1.0 on tokens that count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from opdwatch.errors import OpdwatchError


@dataclass
class TeacherTopK:
    """The teacher's support at each visited prefix.

    ids_BTK: (B, T, K) int64 token ids of the teacher's K most likely tokens (in the student's vocabulary ids)
    logp_BTK: (B, T, K) float teacher log-probs of those tokens under the full teacher distribution
    """

    ids_BTK: torch.Tensor
    logp_BTK: torch.Tensor

    def rows(self, index: torch.Tensor) -> TeacherTopK:
        return TeacherTopK(self.ids_BTK[index], self.logp_BTK[index])


def teacher_topk(teacher_logits_BTV: torch.Tensor, k: int) -> TeacherTopK:
    """Top-K ids and full-distribution log-probs of the teacher. (B, T, V) -> TeacherTopK with (B, T, K)."""
    V = teacher_logits_BTV.shape[-1]
    if not 1 <= k <= V:
        raise OpdwatchError(f"top-K support size k={k} must be in [1, vocabulary size {V}]")
    logp_BTV = torch.log_softmax(teacher_logits_BTV.detach(), dim=-1)
    logp_BTK, ids_BTK = logp_BTV.topk(k, dim=-1)  # sorted, largest first
    return TeacherTopK(ids_BTK=ids_BTK, logp_BTK=logp_BTK)


def renormalise(logp_BTK: torch.Tensor) -> torch.Tensor:
    """Log-probs restricted to the support and renormalised over it: log p - logsumexp_K log p. (B,T,K)->(B,T,K)."""
    return logp_BTK - torch.logsumexp(logp_BTK, dim=-1, keepdim=True)


def topk_reverse_kl_per_token(student_logits_BTV: torch.Tensor, support: TeacherTopK) -> torch.Tensor:
    """KL(p~_theta || p~_T) over the teacher's top-K support at each position. Returns (B, T), differentiable.

    student_logits_BTV: (B, T, V) with grad. Only the K support columns (and the student's own log-normaliser,
    which cancels in the renormalisation) matter, so a full log-softmax is not needed.
    """
    dtype = torch.promote_types(student_logits_BTV.dtype, support.logp_BTK.dtype)
    # A support slot the teacher gives zero mass (-inf: a student id with no teacher counterpart) is left out
    # on both sides, otherwise the KL would be infinite for a token the teacher cannot express.
    valid_BTK = torch.isfinite(support.logp_BTK)
    student_BTK = renormalise(student_logits_BTV.gather(-1, support.ids_BTK).to(dtype)
                              .masked_fill(~valid_BTK, float("-inf")))
    teacher_BTK = renormalise(support.logp_BTK.to(dtype))
    zero = torch.zeros((), dtype=dtype)
    # where() before the subtraction: -inf - -inf would put NaN into the gradient even where it is masked.
    log_ratio_BTK = student_BTK.where(valid_BTK, zero) - teacher_BTK.where(valid_BTK, zero)
    return (student_BTK.exp() * log_ratio_BTK).sum(dim=-1)


def topk_reverse_kl_loss(
    student_logits_BTV: torch.Tensor, support: TeacherTopK, mask_BT: torch.Tensor
) -> torch.Tensor:
    """Token-mean truncated reverse KL over the masked positions (0 when the mask is empty). Returns a scalar."""
    kl_BT = topk_reverse_kl_per_token(student_logits_BTV, support)
    return (kl_BT * mask_BT).sum() / mask_BT.sum().clamp(min=1)


def support_coverage(student_logits_BTV: torch.Tensor, support: TeacherTopK) -> torch.Tensor:
    """Student probability mass inside the teacher's support, (B, T), detached: how much of the student's
    distribution the truncated objective actually sees (low coverage = the student wanders off the teacher)."""
    logp_BTV = torch.log_softmax(student_logits_BTV.detach(), dim=-1)
    return logp_BTV.gather(-1, support.ids_BTK).exp().sum(dim=-1)
