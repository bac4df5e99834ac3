"""What the probe reports, from per-token scores of the counterfactuals: pure numpy functions (no torch).

Advantage is teacher - student log-prob, as in reverse-KL OPD. Every mean is a mean over probe rows of the row's
token mean, so each prompt weighs the same whatever its length. The loop incentive is the advantage on the
repeated copies (copy index >= 2) minus the advantage on the regular tokens: how much more OPD rewards continuing
a loop that has started than writing the response itself (the paper's mechanism). The EOS advantage at a
boundary is teacher - student log-prob of stopping there: negative after a repeat means OPD penalises stopping
once a loop has started.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from opdwatch.probe.counterfactual import ORIGINAL, REGULAR

# Step-metric keys of the probe (trainer in-run probe and the recorder-side API)
LOOP_INCENTIVE = "probe/loop_incentive"  # advantage on copies >= 2 minus advantage on regular tokens (nats/token)
LOOP_ADVANTAGE = "probe/loop_advantage"  # advantage on copies >= 2
REGULAR_ADVANTAGE = "probe/regular_advantage"  # advantage on the regular tokens
STUDENT_LOOP_LOGP = "probe/student_loop_logp"  # loop propensity: student log-prob of continuing a started loop
TEACHER_LOOP_LOGP = "probe/teacher_loop_logp"  # teacher log-prob of continuing a started loop
EOS_ADV_NATURAL = "probe/eos_advantage_natural"  # EOS advantage at the natural end
EOS_ADV_REPEAT = "probe/eos_advantage_after_repeat"  # EOS advantage after 1.. repeated copies (mean)
STUDENT_EOS_REPEAT = "probe/student_eos_logp_after_repeat"  # student log-prob of stopping after a repeat
HEADLINE_KEYS = (LOOP_INCENTIVE, LOOP_ADVANTAGE, REGULAR_ADVANTAGE, STUDENT_LOOP_LOGP, TEACHER_LOOP_LOGP,
                 EOS_ADV_NATURAL, EOS_ADV_REPEAT, STUDENT_EOS_REPEAT)
DELTA_SUFFIX = "_delta"  # `key + DELTA_SUFFIX`: the value minus the value at step 0 (in-run probe)


@dataclass(frozen=True)
class RowScores:
    """One counterfactual's scores. T = loop-sequence tokens, J = copy boundaries (EOS positions)."""

    copy_index_T: np.ndarray  # (T,) int: REGULAR, ORIGINAL, 2, 3, ...
    teacher_logp_T: np.ndarray  # (T,) teacher log-prob of each loop-sequence token
    student_logp_T: np.ndarray  # (T,) student log-prob
    teacher_eos_J: np.ndarray  # (J,) teacher log-prob of EOS after j repeated copies (j = 0: natural end)
    student_eos_J: np.ndarray  # (J,) student log-prob of its stop event there
    reference_logp_T: np.ndarray | None = None  # (T,) reference log-prob, when a reference is scored
    reference_eos_J: np.ndarray | None = None  # (J,)


def _is_copy(k: int, idx: np.ndarray) -> np.ndarray:
    return idx == k


def _nanmean(values: Sequence[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else math.nan


def _row_mean(values_T: np.ndarray, mask_T: np.ndarray) -> float:
    return float(values_T[mask_T].mean()) if mask_T.any() else math.nan


def group_mean(rows: Sequence[RowScores], field: str, select) -> float:  # noqa: ANN001 - index -> bool mask
    """Mean over rows of the row's mean of `field` on the tokens where `select(copy_index_T)` holds."""
    return _nanmean([_row_mean(np.asarray(getattr(r, field), np.float64), select(r.copy_index_T)) for r in rows])


def advantage_mean(rows: Sequence[RowScores], select) -> float:  # noqa: ANN001
    return _nanmean([_row_mean(np.asarray(r.teacher_logp_T, np.float64) - np.asarray(r.student_logp_T, np.float64),
                               select(r.copy_index_T)) for r in rows])


def _eos_mean(rows: Sequence[RowScores], field: str, j: int | None) -> float:
    """Mean over rows of `field` at boundary j; j = None: of each row's mean over its boundaries j >= 1."""
    out = []
    for r in rows:
        v_J = np.asarray(getattr(r, field), np.float64)
        if j is None:
            out.append(float(v_J[1:].mean()) if v_J.size > 1 else math.nan)
        else:
            out.append(float(v_J[j]) if j < v_J.size else math.nan)
    return _nanmean(out)


@dataclass(frozen=True)
class ProbeSummary:
    per_copy: list[dict[str, float]]  # copy index k -> teacher/student(/reference) log-prob and advantage
    eos: list[dict[str, float]]  # repeats j -> teacher/student log-prob of EOS and its advantage
    metrics: dict[str, float]  # the headline numbers under HEADLINE_KEYS
    rows: int  # counterfactuals scored


def summarize(rows: Sequence[RowScores]) -> ProbeSummary:
    """Per copy index and per EOS boundary means, and the headline metrics."""
    if not rows:
        raise ValueError("no probe rows to summarise")
    copies = max(int(r.copy_index_T.max(initial=ORIGINAL)) for r in rows)
    has_ref = all(r.reference_logp_T is not None for r in rows)
    per_copy = []
    for k in range(REGULAR, copies + 1):
        sel = partial(_is_copy, k)
        entry = {"copy": k, "teacher_logp": group_mean(rows, "teacher_logp_T", sel),
                 "student_logp": group_mean(rows, "student_logp_T", sel), "advantage": advantage_mean(rows, sel),
                 "tokens": int(sum(int((r.copy_index_T == k).sum()) for r in rows))}
        if has_ref:
            entry["reference_logp"] = group_mean(rows, "reference_logp_T", sel)
        per_copy.append(entry)
    boundaries = max(len(r.teacher_eos_J) for r in rows)
    eos = []
    for j in range(boundaries):
        t, s = _eos_mean(rows, "teacher_eos_J", j), _eos_mean(rows, "student_eos_J", j)
        entry = {"repeats": j, "teacher_logp": t, "student_logp": s,
                 "advantage": _nanmean([float(r.teacher_eos_J[j] - r.student_eos_J[j]) for r in rows
                                        if j < len(r.teacher_eos_J)])}
        if has_ref:
            entry["reference_logp"] = _eos_mean(rows, "reference_eos_J", j)
        eos.append(entry)

    def loop(idx: np.ndarray) -> np.ndarray:
        return idx > ORIGINAL

    def regular(idx: np.ndarray) -> np.ndarray:
        return idx == REGULAR

    loop_adv, reg_adv = advantage_mean(rows, loop), advantage_mean(rows, regular)
    eos_adv_repeat = _nanmean([float(np.mean(np.asarray(r.teacher_eos_J[1:], np.float64)
                                             - np.asarray(r.student_eos_J[1:], np.float64)))
                               for r in rows if len(r.teacher_eos_J) > 1])
    metrics = {
        LOOP_INCENTIVE: loop_adv - reg_adv,
        LOOP_ADVANTAGE: loop_adv,
        REGULAR_ADVANTAGE: reg_adv,
        STUDENT_LOOP_LOGP: group_mean(rows, "student_logp_T", loop),
        TEACHER_LOOP_LOGP: group_mean(rows, "teacher_logp_T", loop),
        EOS_ADV_NATURAL: eos[0]["advantage"],
        EOS_ADV_REPEAT: eos_adv_repeat,
        STUDENT_EOS_REPEAT: _eos_mean(rows, "student_eos_J", None),
    }
    return ProbeSummary(per_copy, eos, metrics, len(rows))


def family_key(key: str, family: str) -> str:
    """`probe/x` -> `probe/<family>/x` (other keys unchanged): a second probe set's key next to the first's."""
    return f"probe/{family}/{key.removeprefix('probe/')}" if key.startswith("probe/") else key


def in_family(metrics: dict[str, float], family: str) -> dict[str, float]:
    """`metrics` with every `probe/x` key renamed by :func:`family_key` (the in-run probe's mid-solution loops are
    `probe/middle/...`)."""
    return {family_key(k, family): v for k, v in metrics.items()}


def with_deltas(metrics: dict[str, float], baseline: dict[str, float]) -> dict[str, float]:
    """`metrics` plus each headline metric minus its value in `baseline` (step 0), under key + DELTA_SUFFIX."""
    out = dict(metrics)
    for key in HEADLINE_KEYS:
        if key in metrics and key in baseline:
            out[key + DELTA_SUFFIX] = metrics[key] - baseline[key]
    return out
