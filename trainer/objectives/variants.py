"""The distillation term's estimator, chosen by name from a registry (config `objective.estimator`).

    ESTIMATORS["sampled_token"]    the paper's OPD: clipped surrogate with A_t = log pi_T(y_t) - log pi_theta(y_t)
    ESTIMATORS["topk_reverse_kl"]  Revisiting OPD: reverse KL over the teacher's top-K support at each prefix

Both see the same `OPDInputs`; an estimator declares whether it needs the teacher's top-K support so that
teacher scoring only keeps (B, T, K) tensors when they are used. Adding an estimator = one function + one entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from opdwatch.trainer.objectives.objective import clipped_surrogate_loss
from opdwatch.trainer.objectives.objective_topk import TeacherTopK, topk_reverse_kl_loss


@dataclass
class OPDInputs:
    """One minibatch, shapes B x T (x V). Everything but the student's logits/log-probs is detached."""

    logits_BTV: torch.Tensor  # student logits at the response positions (with grad)
    logp_BT: torch.Tensor  # student log-prob of the sampled tokens (with grad), 0 at padding
    old_logp_BT: torch.Tensor  # pi_old log-prob of the sampled tokens
    advantage_BT: torch.Tensor  # teacher - student log-prob of the sampled tokens
    mask_BT: torch.Tensor  # 1.0 on tokens that receive loss (padding and masked special tokens are 0)
    clip_eps: float
    teacher_topk: TeacherTopK | None = None  # present when the estimator needs it


@dataclass(frozen=True)
class Estimator:
    loss: Callable[[OPDInputs], torch.Tensor]  # scalar loss to minimise
    needs_topk: bool  # whether teacher scoring must keep the teacher's top-K support


def sampled_token_loss(x: OPDInputs) -> torch.Tensor:
    return clipped_surrogate_loss(x.logp_BT, x.old_logp_BT, x.advantage_BT, x.mask_BT, x.clip_eps)


def topk_kl_loss(x: OPDInputs) -> torch.Tensor:
    if x.teacher_topk is None:
        raise ValueError("topk_reverse_kl needs the teacher's top-K support (score the teacher with k > 0)")
    return topk_reverse_kl_loss(x.logits_BTV, x.teacher_topk, x.mask_BT)


ESTIMATORS: dict[str, Estimator] = {
    "sampled_token": Estimator(sampled_token_loss, needs_topk=False),
    "topk_reverse_kl": Estimator(topk_kl_loss, needs_topk=True),
}
