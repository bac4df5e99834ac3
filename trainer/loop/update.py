"""The loss and the optimizer step of one minibatch, and the step's mean of the minibatch metrics.

Differences from the paper: rollouts are split into `minibatches` by prompt (each minibatch takes its prompts'
golden solutions for the SFT term) and every reduction is a token-mean over the minibatch. A non-finite
log-prob, loss or gradient norm skips that minibatch's update, so it never reaches the weights.
"""

from __future__ import annotations

import math

import torch
from transformers import PreTrainedModel

from opdwatch.trainer.loop.scores import Scores, row_chunks
from opdwatch.trainer.objectives.objective import full_vocab_kl, sft_nll, total_loss
from opdwatch.trainer.objectives.scoring import SequenceBatch, response_logits, token_logp
from opdwatch.trainer.objectives.variants import ESTIMATORS, Estimator, OPDInputs
from opdwatch.trainer.parallel.distributed import SINGLE, DistEnv, all_reduce_gradients, all_sum, any_rank
from opdwatch.trainer.parallel.fsdp import is_sharded


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
    estimator: Estimator = ESTIMATORS["sampled_token"],
    env: DistEnv = SINGLE,
    micro_rows: int = 0,
    reference: PreTrainedModel | None = None,
) -> dict[str, float]:
    """Loss on rollout rows `rows` (+ their golden solutions), backward, clip, step. Returns metrics.

    The loss is the token-mean over the whole minibatch on all ranks. `micro_rows` > 0 runs the forward/backward
    on that many rollouts (and golden solutions) at a time, each weighted by its share of the minibatch's tokens,
    so memory is bounded and the update is the same (gradient accumulation); reference logits are then
    recomputed per micro-batch from `reference` when `scores` holds none. Data parallel (`env.active`): the token
    shares are global and gradients are summed over ranks (parallel.distributed).
    """
    loss_mask_BT = seq.mask_BT if scores.loss_mask_BT is None else scores.loss_mask_BT
    sharded = is_sharded(student)
    n_tokens = all_sum(float(loss_mask_BT[rows].sum()), env)  # the minibatch's loss tokens on all ranks
    use_sft = golden is not None and alpha > 0  # the golden forward costs a pass; skip it when its weight is 0
    n_golden = all_sum(float(golden.mask_BT.sum()), env) if use_sft else 0.0
    micro = [rows[c] for c in row_chunks(len(rows), micro_rows)]
    golden_micro = row_chunks(golden.tokens_BT.shape[0], micro_rows) if use_sft else []
    optimizer.zero_grad(set_to_none=True)
    totals = {"total": 0.0, "opd": 0.0, "kl": 0.0, "sft": 0.0}
    finite = all_finite(scores.old_logp_BT[rows], scores.teacher_logp_BT[rows], scores.ref_logp_BT[rows])
    for i in range(max(len(micro), len(golden_micro))):
        terms = {"opd": torch.zeros(()), "kl": torch.zeros(()), "sft": torch.zeros(())}
        if i < len(micro):
            r = micro[i]
            mb = seq.rows(r)
            mask_BT = loss_mask_BT[r]
            share = float(mask_BT.sum()) / n_tokens if n_tokens > 0 else 0.0  # 1.0 for one chunk on one rank
            logits_BTV = response_logits(student, mb)
            logp_BT = token_logp(logits_BTV, mb.tokens_BT).where(mb.mask_BT.bool(), torch.zeros(()))
            topk = None if scores.teacher_topk is None else scores.teacher_topk.rows(r)
            if scores.ref_logits_BTV is not None:
                ref_logits_BTV = scores.ref_logits_BTV[r]
            else:
                with torch.no_grad():
                    ref_logits_BTV = response_logits(reference, mb)
            terms["opd"] = share * estimator.loss(OPDInputs(logits_BTV, logp_BT, scores.old_logp_BT[r],
                                                            scores.advantage_BT[r], mask_BT, clip_eps, topk))
            terms["kl"] = share * full_vocab_kl(logits_BTV, ref_logits_BTV, mask_BT)
            finite = finite and all_finite(logp_BT.detach())
        if i < len(golden_micro):
            g = golden.rows(golden_micro[i])
            g_share = float(g.mask_BT.sum()) / n_golden if n_golden > 0 else 0.0
            terms["sft"] = g_share * sft_nll(token_logp(response_logits(student, g), g.tokens_BT), g.mask_BT)
        loss = total_loss(opd=terms["opd"], kl=terms["kl"], sft=terms["sft"], beta=beta, alpha=alpha)
        finite = finite and all_finite(loss.detach())
        for key, value in (("total", loss), *terms.items()):
            totals[key] += float(value.detach())
        # FSDP reduce-scatters inside backward, so every rank must run it; a non-finite gradient is dropped below
        if loss.requires_grad and (finite or sharded):
            loss.backward()  # accumulates: the sum over micro-batches (and ranks) is the minibatch token-mean
    totals = {key: all_sum(value, env) for key, value in totals.items()}
    metrics = {
        "loss/total": totals["total"],
        "loss/opd": totals["opd"],
        "loss/kl": totals["kl"],
        "loss/sft": totals["sft"],
        "update/skipped_nonfinite": 0.0,
    }
    if any_rank(not finite, env):  # every rank skips together, or the replicas would drift apart
        optimizer.zero_grad(set_to_none=True)
        metrics.update({"update/skipped_nonfinite": 1.0, "optim/grad_norm": math.nan})
        return metrics
    if not sharded:  # FSDP has already summed them (parallel.fsdp)
        all_reduce_gradients(student, env)
    norm = torch.nn.utils.clip_grad_norm_(student.parameters(), grad_clip)
    grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # FSDP: a DTensor
    metrics["optim/grad_norm"] = grad_norm
    if not math.isfinite(grad_norm):
        optimizer.zero_grad(set_to_none=True)
        metrics["update/skipped_nonfinite"] = 1.0
        return metrics
    optimizer.step()
    return metrics


def mean_metrics(per_minibatch: list[dict[str, float]]) -> dict[str, float]:
    """Average minibatch metrics; skip counts are summed. NaNs (from skipped minibatches) are left out."""
    out: dict[str, float] = {}
    for key in per_minibatch[0]:
        values = [m[key] for m in per_minibatch if math.isfinite(m[key])]
        if key == "update/skipped_nonfinite":
            out[key] = float(sum(values))
        else:
            out[key] = sum(values) / len(values) if values else math.nan
    return out
