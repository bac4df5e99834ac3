"""The probe on models already in memory: a fixed probe set, the teacher's scores (cached once), step metrics.

This is what the trainer's in-run probe calls every `probe.every` steps, and what a foreign training loop calls
to record the same `probe/...` step metrics:

    probe_set = make_probe_set(prompt_ids, responses, eos_id=tok.eos_token_id)   # token ids, once
    cache = teacher_scores(teacher, probe_set)                                   # once: the teacher is frozen
    baseline = probe_metrics(student, teacher, probe_set, teacher_cache=cache)    # step 0
    ...
    rec.log_metrics(step, "train", with_deltas(probe_metrics(student, teacher, probe_set,
                                                             teacher_cache=cache), baseline))

The models are scored under no_grad and put back in the train/eval mode they were in; nothing here draws random
numbers, so calling it never changes a training trajectory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from opdwatch.probe.counterfactual import ChunkSpec, Counterfactual, build_counterfactual
from opdwatch.probe.scoring import score_counterfactuals
from opdwatch.probe.summary import ProbeSummary, RowScores, summarize

Scores = list[tuple[np.ndarray, np.ndarray]]  # per counterfactual: (T,) token log-probs, (J,) stop log-probs


@dataclass(frozen=True)
class ProbeSet:
    counterfactuals: tuple[Counterfactual, ...]  # in student ids
    student_stop_ids: tuple[int, ...]  # ids whose mass is the student's stop event (canonical EOS first)
    teacher_stop_ids: tuple[int, ...]  # the teacher's EOS id(s)
    to_teacher: tuple[tuple[int, int], ...] = ()  # student -> teacher id rewrites (the EOS mapping); () = same ids

    def teacher_ids(self, ids: list[int]) -> list[int]:
        table = dict(self.to_teacher)
        return [table.get(t, t) for t in ids]


def make_probe_set(prompt_ids: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], *, eos_id: int,
                   spec: ChunkSpec | None = None, copies: int = 6, mapping: Any = None) -> ProbeSet:  # noqa: ANN401
    """Counterfactuals of each (prompt, response) pair; responses without their EOS, empty ones skipped.

    `mapping` is a trainer `TokenMapping` (opdwatch.trainer.data.eos_canon.resolve_mapping) when the teacher's
    tokenizer differs from the student's; None means both use the same ids and `eos_id`.
    """
    spec = spec or ChunkSpec(mode="window")
    cfs = tuple(build_counterfactual(p, r, spec, copies) for p, r in zip(prompt_ids, responses, strict=True) if r)
    if mapping is None:
        return ProbeSet(cfs, (int(eos_id),), (int(eos_id),))
    pairs = tuple((int(s), int(t)) for s, t in mapping.student_to_teacher if s != t)
    return ProbeSet(cfs, tuple(mapping.student_stop_ids), (int(mapping.teacher_eos_id),), pairs)


def teacher_scores(teacher: Any, probe_set: ProbeSet, *, batch_size: int = 16,  # noqa: ANN401
                   progress: Any = None) -> Scores:  # noqa: ANN401
    """The teacher's scores of the probe set (in its own ids): computed once, reused at every probe."""
    return score_counterfactuals(teacher, probe_set.counterfactuals, stop_ids=probe_set.teacher_stop_ids,
                                 to_model_ids=probe_set.teacher_ids if probe_set.to_teacher else None,
                                 batch_size=batch_size, progress=progress)


def student_scores(student: Any, probe_set: ProbeSet, *, batch_size: int = 16,  # noqa: ANN401
                   progress: Any = None) -> Scores:  # noqa: ANN401
    return score_counterfactuals(student, probe_set.counterfactuals, stop_ids=probe_set.student_stop_ids,
                                 batch_size=batch_size, progress=progress)


def probe_rows(probe_set: ProbeSet, teacher: Scores, student: Scores, reference: Scores | None = None
               ) -> list[RowScores]:
    ref = reference if reference is not None else [(None, None)] * len(student)
    return [RowScores(np.asarray(cf.copy_index, np.int64), t[0], s[0], t[1], s[1], r[0], r[1])
            for cf, t, s, r in zip(probe_set.counterfactuals, teacher, student, ref, strict=True)]


def probe_summary(student: Any, teacher: Any, probe_set: ProbeSet, *, teacher_cache: Scores | None = None,  # noqa: ANN401
                  batch_size: int = 16) -> ProbeSummary:
    t = teacher_cache if teacher_cache is not None else teacher_scores(teacher, probe_set, batch_size=batch_size)
    return summarize(probe_rows(probe_set, t, student_scores(student, probe_set, batch_size=batch_size)))


def probe_metrics(student: Any, teacher: Any, probe_set: ProbeSet, *, teacher_cache: Scores | None = None,  # noqa: ANN401
                  batch_size: int = 16) -> dict[str, float]:
    """The probe's step metrics (`probe/...` keys, summary.HEADLINE_KEYS) for the student as it is now."""
    return probe_summary(student, teacher, probe_set, teacher_cache=teacher_cache, batch_size=batch_size).metrics
