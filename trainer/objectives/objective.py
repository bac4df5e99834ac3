"""The OPD / Stable-OPD objective as pure functions (no model calls, no state).

Shapes: B rollouts, T response positions, V vocabulary. `mask_BT` is 1.0 on response tokens that count (EOS
included, padding excluded). Every reduction is a token-mean over the whole (mini)batch, as in the CPU study
(the paper's eq. uses 1/|y| per sequence; with token-mean, long looping rollouts weigh more, which is the
regime the paper describes once repetitive tokens dominate the update).
"""

from __future__ import annotations

import torch


def masked_mean(x_BT: torch.Tensor, mask_BT: torch.Tensor) -> torch.Tensor:
    """Mean of x over the masked entries (0 when the mask is empty). x_BT, mask_BT: (B, T) -> scalar."""
    return (x_BT * mask_BT).sum() / mask_BT.sum().clamp(min=1)


def reverse_kl_advantage(teacher_logp_BT: torch.Tensor, student_logp_BT: torch.Tensor) -> torch.Tensor:
    """Sampled-token reverse-KL advantage A_t = log pi_T(y_t|s_t) - log pi_theta(y_t|s_t), detached.

    teacher_logp_BT, student_logp_BT: (B, T) -> (B, T).
    """
    return (teacher_logp_BT - student_logp_BT).detach()


def clipped_surrogate_loss(
    logp_BT: torch.Tensor,
    old_logp_BT: torch.Tensor,
    advantage_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    clip_eps: float,
) -> torch.Tensor:
    """GRPO/PPO clipped surrogate with token-level advantages, negated to a loss.

    rho_t = exp(logp - old_logp); loss = -token_mean(min(rho A, clip(rho, 1-eps, 1+eps) A)).
    logp_BT: (B, T) current policy log-prob of the sampled tokens (with grad); old_logp_BT, advantage_BT:
    (B, T) without grad; mask_BT: (B, T). Returns a scalar.
    """
    ratio_BT = torch.exp(logp_BT - old_logp_BT)
    unclipped_BT = ratio_BT * advantage_BT
    clipped_BT = ratio_BT.clamp(1.0 - clip_eps, 1.0 + clip_eps) * advantage_BT
    return -masked_mean(torch.minimum(unclipped_BT, clipped_BT), mask_BT)


def full_vocab_kl(
    student_logits_BTV: torch.Tensor, reference_logits_BTV: torch.Tensor, mask_BT: torch.Tensor
) -> torch.Tensor:
    """Token-mean KL(pi_theta(.|s_t) || pi_ref(.|s_t)) over the full vocabulary at the visited prefixes.

    student_logits_BTV (with grad), reference_logits_BTV: (B, T, V); mask_BT: (B, T). Returns a scalar.
    """
    student_logp_BTV = torch.log_softmax(student_logits_BTV, dim=-1)
    reference_logp_BTV = torch.log_softmax(reference_logits_BTV, dim=-1)
    kl_BT = (student_logp_BTV.exp() * (student_logp_BTV - reference_logp_BTV)).sum(dim=-1)
    return masked_mean(kl_BT, mask_BT)


def sft_nll(golden_logp_BT: torch.Tensor, golden_mask_BT: torch.Tensor) -> torch.Tensor:
    """Token-mean NLL of golden solutions (one per prompt). golden_logp_BT, golden_mask_BT: (G, U) -> scalar."""
    return -masked_mean(golden_logp_BT, golden_mask_BT)


def total_loss(
    *, opd: torch.Tensor, kl: torch.Tensor, sft: torch.Tensor, beta: float, alpha: float
) -> torch.Tensor:
    """Eq. 6: L = L_OPD + alpha * L_SFT + beta * KL (beta = alpha = 0 is plain OPD)."""
    return opd + beta * kl + alpha * sft
