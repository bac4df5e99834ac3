"""One OPD step's scoring and update, as functions that return tensors and `dict[str, float]` metrics.

Differences from the paper: rollouts are split into `minibatches` by prompt (each minibatch takes its prompts'
golden solutions for the SFT term) and every reduction is a token-mean over the minibatch. A non-finite
log-prob, loss or gradient norm skips that minibatch's update, so it never reaches the weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from trainer.objective import clipped_surrogate_loss, full_vocab_kl, reverse_kl_advantage, sft_nll, total_loss
from trainer.scoring import SequenceBatch, response_logits, token_logp


@dataclass
class Scores:
    old_logp_BT: torch.Tensor  # (B, T) student log-prob of the sampled tokens before the update (pi_old)
    teacher_logp_BT: torch.Tensor  # (B, T)
    ref_logp_BT: torch.Tensor  # (B, T)
    ref_logits_BTV: torch.Tensor  # (B, T, V) for the full-vocabulary KL
    advantage_BT: torch.Tensor  # (B, T) teacher - student, detached


@torch.no_grad()
def score(
    seq: SequenceBatch, student: PreTrainedModel, teacher: PreTrainedModel, reference: PreTrainedModel
) -> Scores:
    old_logp_BT = token_logp(response_logits(student, seq), seq.tokens_BT)
    teacher_logp_BT = token_logp(response_logits(teacher, seq), seq.tokens_BT)
    ref_logits_BTV = response_logits(reference, seq)
    mask_BT = seq.mask_BT.bool()
    zero = torch.zeros_like(old_logp_BT)
    # Padding positions hold arbitrary log-probs; zero them so they never leak into sums or the records.
    old_logp_BT, teacher_logp_BT = old_logp_BT.where(mask_BT, zero), teacher_logp_BT.where(mask_BT, zero)
    ref_logp_BT = token_logp(ref_logits_BTV, seq.tokens_BT).where(mask_BT, zero)
    return Scores(
        old_logp_BT,
        teacher_logp_BT,
        ref_logp_BT,
        ref_logits_BTV,
        reverse_kl_advantage(teacher_logp_BT, old_logp_BT),
    )


def all_finite(*tensors: torch.Tensor) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def minibatch_update(
    student: PreTrainedModel,
    optimizer: torch.optim.Optimizer,
    seq: SequenceBatch,
    scores: Scores,
    rows: torch.Tensor,
    golden: SequenceBatch | None,
    *,
    beta: float,
    alpha: float,
    clip_eps: float,
    grad_clip: float,
) -> dict[str, float]:
    """Loss on rollout rows `rows` (+ their golden solutions), backward, clip, step. Returns metrics."""
    mb = seq.rows(rows)
    mask_BT = mb.mask_BT
    logits_BTV = response_logits(student, mb)
    logp_BT = token_logp(logits_BTV, mb.tokens_BT).where(mask_BT.bool(), torch.zeros(()))
    opd = clipped_surrogate_loss(
        logp_BT, scores.old_logp_BT[rows], scores.advantage_BT[rows], mask_BT, clip_eps
    )
    kl = full_vocab_kl(logits_BTV, scores.ref_logits_BTV[rows], mask_BT)
    sft = torch.zeros(())
    if golden is not None and alpha > 0:  # the golden forward costs a pass; skip it when its weight is 0
        sft = sft_nll(token_logp(response_logits(student, golden), golden.tokens_BT), golden.mask_BT)
    loss = total_loss(opd=opd, kl=kl, sft=sft, beta=beta, alpha=alpha)
    metrics = {
        "loss/total": float(loss.detach()),
        "loss/opd": float(opd.detach()),
        "loss/kl": float(kl.detach()),
        "loss/sft": float(sft.detach()),
        "update/skipped_nonfinite": 0.0,
    }
    optimizer.zero_grad(set_to_none=True)
    if not all_finite(
        loss.detach(),
        scores.old_logp_BT[rows],
        scores.teacher_logp_BT[rows],
        scores.ref_logp_BT[rows],
        logp_BT.detach(),
    ):
        metrics.update({"update/skipped_nonfinite": 1.0, "optim/grad_norm": math.nan})
        return metrics
    loss.backward()
    grad_norm = float(torch.nn.utils.clip_grad_norm_(student.parameters(), grad_clip))
    metrics["optim/grad_norm"] = grad_norm
    if not math.isfinite(grad_norm):
        optimizer.zero_grad(set_to_none=True)
        metrics["update/skipped_nonfinite"] = 1.0
        return metrics
    optimizer.step()
    return metrics


def mean_metrics(parts: list[dict[str, float]]) -> dict[str, float]:
    """Average minibatch metrics; skip counts are summed. NaNs (from skipped minibatches) are left out."""
    out: dict[str, float] = {}
    for key in parts[0]:
        values = [p[key] for p in parts if math.isfinite(p[key])]
        if key == "update/skipped_nonfinite":
            out[key] = float(sum(values))
        else:
            out[key] = sum(values) / len(values) if values else math.nan
    return out
