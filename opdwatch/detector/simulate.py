"""Simulated step-metric traces of OPD runs, with and without a truncation collapse, for detector tests and
the benchmark (benchmarks/detector_eval.py).

The shapes follow the CPU collapse study (shared/notes/cpu-collapse-study.md): a latent collapse curve
drives truncation, looping and repetition through binomial sampling of ``rollouts`` rollouts per step;
precursors lead it — the repetitive-token share rises from ~0.03 to 0.06-0.09 some ``precursor_lead``
steps before the collapse and the EOS advantage turns negative a little later; the teacher log-prob jumps
by ``teacher_jump`` nats at onset; lengths grow, and spread, with truncation. Stable traces have the same noise, a slow
benign drift and optional one-step truncation spikes that recover (seen in Stable-OPD runs). A trace with
``precursor_lead=0`` has no early signal beyond the outcome itself: a stress case, not the documented
physics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from opdwatch.metric_defs import (
    ADV_REGULAR_MEAN,
    ADV_REPETITIVE_MEAN,
    ADVANTAGE_MEAN,
    EOS_ADVANTAGE_MEAN,
    LENGTH_CV,
    LOOP_RATE,
    MEAN_LENGTH,
    REPETITION_RATE,
    REPETITIVE_SHARE,
    ROLLOUT_COUNT,
    STUDENT_LOGP_MEAN,
    TEACHER_LOGP_MEAN,
    TRUNCATION_RATE,
)


@dataclass(frozen=True)
class TraceSpec:
    steps: int = 300                # length of the trace
    onset: float | None = 200.0     # midpoint of the latent collapse curve (None: a stable trace)
    width: float = 2.0              # steps per e-fold of the logistic: 0.5 = abrupt, 8 = slow
    size: float = 0.95              # truncation level after the collapse
    precursor_lead: float = 7.0     # steps by which the repetitive-token share leads the collapse
    eos_lead: float = 4.5           # steps by which the EOS advantage turning negative leads it
    teacher_jump: float = 1.2       # nats; sign = direction (the fast regime rises, the slow one falls)
    noise: float = 1.0              # multiplies every Gaussian noise scale
    rollouts: int = 64              # rollouts per step (binomial noise of the rates)
    drift: float = 0.0              # benign linear drift of teacher log-prob and length over the trace
    spikes: int = 0                 # stable traces: one-step truncation spikes that recover
    base_truncation: float = 0.01   # healthy truncation probability
    seed: int = 0


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -50, 50)))


HEALTHY_LENGTH_CV = 0.25  # spread of healthy response lengths (sd / mean; 0.2-0.3 in the real tiny runs)


def _mixture_cv(truncated: np.ndarray, length: np.ndarray | float, budget: float, cv: float) -> np.ndarray:
    """cv of a batch whose `truncated` share sits at `budget` and the rest around `length` with spread `cv`.
    Only the outcome moves it: the simulator gives the length spread no precursor of its own."""
    f = truncated
    mean = (1 - f) * length + f * budget
    second = (1 - f) * (length ** 2) * (1 + cv ** 2) + f * budget ** 2
    return np.sqrt(np.maximum(second - mean ** 2, 0.0)) / mean


def simulate(spec: TraceSpec) -> list[tuple[int, dict[str, float]]]:
    """(step, metrics) pairs for steps 1..spec.steps, keyed like the recorder's step metrics."""
    rng = np.random.default_rng(spec.seed)
    t = np.arange(1, spec.steps + 1, dtype=np.float64)
    n = spec.rollouts
    if spec.onset is None:
        curve = np.zeros_like(t)
        pre = np.zeros_like(t)
        eos = np.zeros_like(t)
    else:
        w = max(spec.width, 1e-3)
        curve = _sigmoid((t - spec.onset) / w)
        # Precursors rise over a few steps regardless of how abrupt the collapse itself is.
        pw = max(1.0, 0.5 * w)
        pre = _sigmoid((t - (spec.onset - spec.precursor_lead)) / pw) if spec.precursor_lead > 0 else curve
        eos = _sigmoid((t - (spec.onset - spec.eos_lead)) / pw) if spec.eos_lead > 0 else curve
    p_trunc = spec.base_truncation + (spec.size - spec.base_truncation) * curve
    spike_steps = rng.choice(np.arange(10, spec.steps), size=min(spec.spikes, max(spec.steps - 10, 0)),
                             replace=False) if spec.spikes else np.array([], dtype=int)
    for s in spike_steps:
        p_trunc[s] = max(p_trunc[s], rng.uniform(0.08, 0.33))
    p_loop = np.clip(np.concatenate([p_trunc[1:], p_trunc[-1:]]) * 0.95, 0, 1)  # loops show a step early
    trunc = rng.binomial(n, np.clip(p_trunc, 0, 1)) / n
    loop = np.minimum(trunc, rng.binomial(n, p_loop) / n) + rng.binomial(n, 0.005, size=len(t)) / n
    rep = np.clip(loop + rng.binomial(n, 0.01, size=len(t)) / n - rng.binomial(n, 0.01, size=len(t)) / n, 0, 1)
    g = spec.noise
    drift = spec.drift * t / spec.steps
    rise = rng.uniform(0.03, 0.06)
    rep_share = np.clip(0.03 + rise * pre + 0.6 * trunc + rng.normal(0, 0.006 * g, len(t)), 0, 1)
    adv_gap = 0.9 + 0.35 * pre + 0.3 * curve + rng.normal(0, 0.15 * g, len(t))
    eos_adv = 0.4 - 1.6 * eos + rng.normal(0, 0.15 * g, len(t))
    teacher = -1.3 + spec.teacher_jump * curve + 0.3 * drift + rng.normal(0, 0.04 * g, len(t))
    student = -1.1 + 0.1 * curve + rng.normal(0, 0.03 * g, len(t))
    base_len = 35.0 * (1 + 0.15 * drift)
    length = base_len + (128 - base_len) * trunc + rng.normal(0, 1.2 * g, len(t))
    length_cv = _mixture_cv(trunc, base_len, 128.0, HEALTHY_LENGTH_CV) + rng.normal(0, 0.025 * g, len(t))
    rows = []
    for i, step in enumerate(t.astype(int)):
        regular = -0.2 + rng.normal(0, 0.05 * g)
        rows.append((int(step), {
            ROLLOUT_COUNT: float(n), TRUNCATION_RATE: float(trunc[i]),
            LOOP_RATE: float(min(loop[i], 1.0)), REPETITION_RATE: float(rep[i]),
            MEAN_LENGTH: float(max(length[i], 1.0)), LENGTH_CV: float(max(length_cv[i], 0.0)),
            REPETITIVE_SHARE: float(rep_share[i]),
            ADV_REGULAR_MEAN: float(regular), ADV_REPETITIVE_MEAN: float(regular + adv_gap[i]),
            EOS_ADVANTAGE_MEAN: float(eos_adv[i]), TEACHER_LOGP_MEAN: float(teacher[i]),
            STUDENT_LOGP_MEAN: float(student[i]),
            ADVANTAGE_MEAN: float(teacher[i] - student[i]),
        }))
    return rows


def random_collapse(rng: np.random.Generator, *, regime: str, seed: int) -> TraceSpec:
    """A collapsing trace drawn from one regime: "fast" (lr 3e-3 like: onset steps 8-30, abrupt),
    "slow" (lr 1e-3 like: onset after ~150-300 quiet steps, gradual), or "stress" (no precursors)."""
    if regime == "fast":
        return TraceSpec(steps=60, onset=float(rng.uniform(10, 30)), width=float(rng.uniform(0.4, 1.2)),
                         size=float(rng.uniform(0.8, 1.0)), precursor_lead=float(rng.uniform(6, 8)),
                         eos_lead=float(rng.uniform(4, 5)), teacher_jump=float(rng.uniform(0.9, 1.6)),
                         noise=float(rng.uniform(0.7, 1.5)), drift=float(rng.uniform(-0.3, 0.3)), seed=seed)
    if regime == "slow":
        return TraceSpec(steps=400, onset=float(rng.uniform(150, 300)), width=float(rng.uniform(1.5, 6)),
                         size=float(rng.uniform(0.55, 0.95)), precursor_lead=float(rng.uniform(6, 8)),
                         eos_lead=float(rng.uniform(4, 5)), teacher_jump=-float(rng.uniform(0.3, 1.2)),
                         noise=float(rng.uniform(0.7, 1.5)), drift=float(rng.uniform(-1, 1)), seed=seed)
    if regime == "stress":
        return TraceSpec(steps=200, onset=float(rng.uniform(40, 150)), width=float(rng.uniform(0.4, 6)),
                         size=float(rng.uniform(0.55, 1.0)), precursor_lead=0.0, eos_lead=0.0,
                         teacher_jump=float(rng.choice([-1, 1]) * rng.uniform(0.3, 1.5)),
                         noise=float(rng.uniform(0.7, 2.0)), drift=float(rng.uniform(-1, 1)), seed=seed)
    raise ValueError(f"unknown regime {regime!r}")


def random_stable(rng: np.random.Generator, *, seed: int, steps: int = 400) -> TraceSpec:
    """A stable trace: noise, benign drift and a few recovering truncation spikes."""
    return TraceSpec(steps=steps, onset=None, noise=float(rng.uniform(0.7, 2.0)),
                     drift=float(rng.uniform(-1.5, 1.5)), spikes=int(rng.integers(0, 4)),
                     base_truncation=float(rng.uniform(0.0, 0.03)), seed=seed)


def first_at_least(rows: list[tuple[int, dict[str, float]]], key: str, threshold: float) -> int | None:
    for step, m in rows:
        v = m.get(key, math.nan)
        if math.isfinite(v) and v >= threshold:
            return step
    return None
