"""Teacher scores and advantages: the student (pi_old), teacher and reference log-probs of a step's rollouts.

The advantage of a sampled token is teacher - student log-prob (reverse-KL OPD); padding positions are zeroed so
they never leak into sums or the records. Chunked over rows (`opd.score_chunk_rows`) to bound memory at scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from opdwatch.trainer.data.eos_canon import TokenMapping
from opdwatch.trainer.data.special_tokens import mask_special_tokens
from opdwatch.trainer.objectives.objective import reverse_kl_advantage
from opdwatch.trainer.objectives.objective_topk import TeacherTopK
from opdwatch.trainer.objectives.scoring import SequenceBatch, response_logits, token_logp
from opdwatch.trainer.objectives.teacher_scoring import score_teacher


@dataclass
class Scores:
    old_logp_BT: torch.Tensor  # (B, T) student log-prob of the sampled tokens before the update (pi_old)
    teacher_logp_BT: torch.Tensor  # (B, T)
    ref_logp_BT: torch.Tensor  # (B, T)
    ref_logits_BTV: torch.Tensor | None  # (B, T, V) for the full-vocabulary KL; None = recomputed per micro-batch
    advantage_BT: torch.Tensor  # (B, T) teacher - student, detached
    loss_mask_BT: torch.Tensor | None = None  # (B, T) tokens that get loss (special tokens masked); None = all
    teacher_topk: TeacherTopK | None = None  # (B, T, K) teacher support for the top-K estimator


def row_chunks(n: int, size: int) -> list[torch.Tensor]:
    """Row indices 0..n-1 in chunks of `size` (0 = one chunk)."""
    return list(torch.arange(n).split(size if size > 0 else max(n, 1)))


@torch.no_grad()
def score_sequences(
    seq: SequenceBatch,
    student: PreTrainedModel,
    teacher: PreTrainedModel,
    reference: PreTrainedModel,
    *,
    mapping: TokenMapping | None = None,
    topk: int = 0,
    chunk_rows: int = 0,
    keep_ref_logits: bool = True,
    masked_ids: tuple[int, ...] = (),
    stop_ids: tuple[int, ...] = (),
) -> Scores:
    """Student (pi_old), teacher and reference log-probs of the rollouts, `chunk_rows` rollouts per forward
    (0 = all at once). The teacher scores them in its own ids (EOS mapping) and keeps its top-K support when
    `topk` > 0; `keep_ref_logits=False` keeps no (B, T, V) tensor (the update recomputes reference logits per
    micro-batch); `masked_ids` (special tokens) leave the loss mask, except `stop_ids`."""
    old, ref, ref_logits = [], [], []
    for rows in row_chunks(seq.tokens_BT.shape[0], chunk_rows):
        part = seq.rows(rows) if chunk_rows > 0 else seq
        old.append(token_logp(response_logits(student, part), part.tokens_BT))
        logits_BTV = response_logits(reference, part)
        ref.append(token_logp(logits_BTV, part.tokens_BT))
        if keep_ref_logits:
            ref_logits.append(logits_BTV)
        del logits_BTV
    old_logp_BT, ref_logp_BT = torch.cat(old), torch.cat(ref)
    ref_logits_BTV = torch.cat(ref_logits) if keep_ref_logits else None
    vocab = student.config.vocab_size
    teacher_scores = score_teacher(teacher, seq, mapping=mapping, k=topk, student_vocab_size=vocab,
                                   chunk_rows=chunk_rows)
    mask_BT = seq.mask_BT.bool()
    zero = torch.zeros_like(old_logp_BT)
    # Padding positions hold arbitrary log-probs; zero them so they never leak into sums or the records.
    old_logp_BT, teacher_logp_BT = old_logp_BT.where(mask_BT, zero), teacher_scores.logp_BT.where(mask_BT, zero)
    ref_logp_BT = ref_logp_BT.where(mask_BT, zero)
    loss_mask_BT = (mask_special_tokens(seq.tokens_BT, seq.mask_BT, masked_ids, keep_ids=stop_ids)
                    if masked_ids else None)
    return Scores(
        old_logp_BT,
        teacher_logp_BT,
        ref_logp_BT,
        ref_logits_BTV,
        reverse_kl_advantage(teacher_logp_BT, old_logp_BT),
        loss_mask_BT,
        teacher_scores.topk,
    )
