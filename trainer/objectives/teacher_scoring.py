"""Teacher scoring in bounded memory, in the teacher's own ids: sampled-token log-probs and (optionally) top-K.

A 7B teacher's logits for 256 rollouts x 4k tokens x 152k vocabulary would not fit anywhere, so the teacher runs
on `chunk_rows` rollouts at a time and keeps only what the objective needs: the log-prob of each sampled token
(B, T) and, for top-K support matching, K ids and log-probs per position (B, T, K). Before the forward pass the
student's ids are rewritten with the EOS/special-token mapping (data.eos_canon), so the teacher scores a
student EOS as its own EOS; top-K ids come back in student ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from opdwatch.trainer.data.eos_canon import TokenMapping, teacher_logp_in_student_space, to_teacher_ids
from opdwatch.trainer.objectives.objective_topk import TeacherTopK
from opdwatch.trainer.objectives.scoring import SequenceBatch, response_logits, token_logp


@dataclass
class TeacherScores:
    logp_BT: torch.Tensor  # (B, T) teacher log-prob of each sampled (canonicalised) token, 0 at padding
    topk: TeacherTopK | None  # (B, T, K) support in student ids, or None when k = 0


def to_teacher_batch(seq: SequenceBatch, mapping: TokenMapping | None) -> SequenceBatch:
    """The same batch with prompt and response ids rewritten into teacher ids (identity: the batch itself)."""
    if mapping is None or mapping.is_identity:
        return seq
    return SequenceBatch(to_teacher_ids(seq.ids_BS, mapping), seq.attn_BS, seq.pos_BS,
                         to_teacher_ids(seq.tokens_BT, mapping), seq.mask_BT, seq.prompt_width)


@torch.no_grad()
def score_teacher(teacher: PreTrainedModel, seq: SequenceBatch, *, mapping: TokenMapping | None = None,
                  k: int = 0, student_vocab_size: int | None = None, chunk_rows: int = 0) -> TeacherScores:
    """Teacher log-probs of the rollouts in `seq` (student ids), `chunk_rows` rollouts per forward (0 = all).

    k > 0 also returns the teacher's top-K support at each position, moved into student ids (needs
    `student_vocab_size`, the student's logit width).
    """
    tseq = to_teacher_batch(seq, mapping)
    B = seq.tokens_BT.shape[0]
    step = chunk_rows if chunk_rows > 0 else B
    logps, ids, vals = [], [], []
    for start in range(0, B, step):
        rows = torch.arange(start, min(B, start + step))
        chunk = tseq.rows(rows)
        logits_BTV = response_logits(teacher, chunk)
        logps.append(token_logp(logits_BTV, chunk.tokens_BT))
        if k > 0:
            if student_vocab_size is None:
                raise ValueError("student_vocab_size is needed for top-K teacher support")
            if mapping is None:
                logp_BTV = torch.log_softmax(logits_BTV, dim=-1)[..., :student_vocab_size]
            else:
                logp_BTV = teacher_logp_in_student_space(logits_BTV, mapping, student_vocab_size)
            top_vals, top_ids = logp_BTV.topk(k, dim=-1)
            ids.append(top_ids)
            vals.append(top_vals)
        del logits_BTV  # the (rows, T, V) block is the memory peak; drop it before the next chunk
    mask_BT = seq.mask_BT.bool()
    logp_BT = torch.cat(logps).where(mask_BT, torch.zeros(()))
    topk = TeacherTopK(torch.cat(ids), torch.cat(vals)) if k > 0 else None
    return TeacherScores(logp_BT, topk)
