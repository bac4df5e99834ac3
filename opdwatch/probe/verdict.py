"""The pre-flight risk verdict: low / medium / high collapse risk from the probe's headline metrics, with reasons.

The rule follows the mechanism (Demystifying OPD, shared/notes/cpu-collapse-study.md): OPD collapses when the
teacher pays more advantage for continuing a started loop than for the response's own tokens (loop incentive)
and does not pay for stopping after a repeat (EOS advantage after a repeat). High risk needs a loop incentive of
at least `incentive_high` and one of two aggravating facts (stopping after a repeat penalised, or the teacher
itself continuing loops readily). Low risk: an incentive below `incentive_low`, or below `incentive_high` with
neither aggravating fact (an incentive measured on student rollouts also holds the teacher's disapproval of the
student's own regular tokens, which does not make loops pay). The incentive thresholds were fixed before any
measurement; `eos_penalty`, `teacher_loop_logp` and the "neither fact" rule were set on student seed 0 of the
clean and weak-prior demo pairs, then checked on seeds 1-2 and on the copy-prior pair (docs/probe.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from opdwatch.probe.summary import EOS_ADV_REPEAT, LOOP_INCENTIVE, TEACHER_LOOP_LOGP

RISKS = ("low", "medium", "high")


@dataclass(frozen=True)
class RiskThresholds:
    # loop incentive (nats/token) at or above which the teacher pays for continuing loops: high risk possible
    incentive_high: float = 1.0
    # loop incentive below which loops earn no more than regular tokens: low risk
    incentive_low: float = 0.3
    # EOS advantage after a repeat below which stopping after a loop is penalised (nats; set on seed 0 of the
    # demo pairs: clean -0.01, weak prior -1.40)
    eos_penalty: float = -0.5
    # teacher log-prob per loop token at or above which the teacher itself continues loops (a copy prior; set on
    # seed 0: clean -1.48, weak prior -0.63)
    teacher_loop_logp: float = -1.0


@dataclass(frozen=True)
class RiskVerdict:
    risk: str  # one of RISKS
    reasons: list[str] = field(default_factory=list)  # one sentence per fact that decided it


def risk_verdict(metrics: dict[str, float], thresholds: RiskThresholds | None = None) -> RiskVerdict:
    """The verdict on a probe's headline metrics (summary.HEADLINE_KEYS)."""
    th = thresholds or RiskThresholds()
    inc, eos, t_loop = (metrics.get(k, math.nan) for k in (LOOP_INCENTIVE, EOS_ADV_REPEAT, TEACHER_LOOP_LOGP))
    if math.isnan(inc):
        return RiskVerdict("medium", ["no loop incentive could be measured (no regular or no repeated tokens)"])
    reasons = [f"loop incentive {inc:+.2f} nats/token (advantage on repeated copies minus regular tokens; "
               f"high from {th.incentive_high:g}, low below {th.incentive_low:g})"]
    penalised = not math.isnan(eos) and eos < th.eos_penalty
    copies = not math.isnan(t_loop) and t_loop >= th.teacher_loop_logp
    if not math.isnan(eos):
        reasons.append(f"EOS advantage after a repeat {eos:+.2f} nats: stopping once a loop has started is "
                       + ("penalised" if penalised else "not penalised"))
    if not math.isnan(t_loop):
        reasons.append(f"teacher log-prob of continuing a loop {t_loop:.2f} nats/token: the teacher "
                       + ("continues loops (copy prior)" if copies else "does not readily continue loops"))
    if inc >= th.incentive_high and (penalised or copies):
        return RiskVerdict("high", reasons)
    if inc < th.incentive_low or (inc < th.incentive_high and not (penalised or copies)):
        return RiskVerdict("low", reasons)
    return RiskVerdict("medium", reasons)
