"""The signals the detector watches, read from one step's metrics dict, and their running baselines.

Each signal is one number per train step taken from the recorder's step metrics (keys in
opdwatch/aggregates.py). They are the quantities that move first in a truncation collapse
(shared/notes/cpu-collapse-study.md): the share of repetitive tokens and the advantage gap between
repetitive and regular tokens rise, the EOS token's advantage turns negative, the teacher log-prob jumps,
rollouts start to end in n-gram loops (``rollout/loop_rate``, counted from the token records before the
budget runs out), and only then truncation, repetition and length take off.

A :class:`Baseline` turns a raw value into a z-score against the signal's own early level: the robust
centre and spread of the warm-up steps, floored by a per-signal minimum scale (a flat warm-up, e.g. a
truncation rate of exactly 0, must not make the first truncated rollout look like a 100-sigma event), then
following the run slowly while it is healthy (EWMA), so slow benign drift over hundreds of steps is not
mistaken for a collapse.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from opdwatch.detector.persist import decode_float, encode_float
from opdwatch.metric_defs import (
    ADV_REGULAR_MEAN,
    ADV_REPETITIVE_MEAN,
    EOS_ADVANTAGE_MEAN,
    LENGTH_CV,
    LOOP_RATE,
    MEAN_LENGTH,
    REPETITION_RATE,
    REPETITIVE_SHARE,
    TEACHER_LOGP_MEAN,
    TRUNCATION_RATE,
)


def _key(name: str) -> Callable[[Mapping[str, float]], float]:
    return lambda m: _get(m, name)


def _get(m: Mapping[str, float], name: str) -> float:
    value = m.get(name)
    return float(value) if value is not None else math.nan


def _adv_gap(m: Mapping[str, float]) -> float:
    return _get(m, ADV_REPETITIVE_MEAN) - _get(m, ADV_REGULAR_MEAN)


def _log_length(m: Mapping[str, float]) -> float:
    length = _get(m, MEAN_LENGTH)
    return math.log(length) if length > 0 else math.nan


@dataclass(frozen=True)
class SignalSpec:
    name: str
    keys: tuple[str, ...]          # the step-metric keys it is computed from
    value: Callable[[Mapping[str, float]], float]
    direction: str                 # "up", "down" or "both": which change is bad
    floor: float                   # smallest scale (raw units) a baseline may have
    outcome: bool                  # True: the collapse itself (truncation/looping), False: a precursor
    # What the signal is evidence of: "rollouts" (what the samples look like: loops, repeats, length),
    # "advantage" (what the update rewards: the paper's mechanism) or "teacher" (what the teacher scores).
    family: str
    description: str


SIGNALS: dict[str, SignalSpec] = {s.name: s for s in (
    # Floors: the step-to-step noise of a healthy 64-rollout batch; one extra truncated rollout in 64 is
    # 0.016, so a 0.03 floor needs about two of them per step, sustained, to build up evidence.
    SignalSpec("truncation", (TRUNCATION_RATE,), _key(TRUNCATION_RATE), "up", 0.03,
               outcome=True, family="rollouts", description="share of rollouts that hit the generation budget"),
    SignalSpec("repetition", (REPETITION_RATE,), _key(REPETITION_RATE), "up", 0.03,
               outcome=True, family="rollouts",
               description="share of rollouts whose zlib tail ratio flags them repetitive"),
    SignalSpec("loop", (LOOP_RATE,), _key(LOOP_RATE), "up", 0.03, outcome=True,
               family="rollouts",
               description="share of rollouts ending in an n-gram loop (loop_onset set), counted from the tokens"),
    SignalSpec("rep_share", (REPETITIVE_SHARE,), _key(REPETITIVE_SHARE), "up", 0.01,
               outcome=False, family="rollouts",
               description="share of tokens whose n-gram repeats earlier in the rollout or lie in a repetitive tail"),
    SignalSpec("length", (MEAN_LENGTH,), _log_length, "up", 0.04, outcome=False, family="rollouts",
               description="log of the mean response length (so the scale is relative growth)"),
    # The spread moves before the mean: the first looping rollouts run long while the rest still stop. Added
    # after the CPU study: on the real tiny runs it moved the first warning 1-2 steps earlier in 2 of 7
    # collapses, with no warning on the stable runs (docs/detector.md).
    SignalSpec("length_cv", (LENGTH_CV,), _key(LENGTH_CV), "up", 0.1, outcome=False,
               family="rollouts", description="coefficient of variation (sd / mean) of the response lengths"),
    SignalSpec("adv_gap", (ADV_REPETITIVE_MEAN, ADV_REGULAR_MEAN), _adv_gap, "up", 0.25,
               outcome=False, family="advantage", description="advantage of repetitive minus regular tokens (nats)"),
    SignalSpec("eos_adv", (EOS_ADVANTAGE_MEAN,), _key(EOS_ADVANTAGE_MEAN), "down", 0.25,
               outcome=False, family="advantage",
               description="advantage of the EOS token (nats); negative pushes the student not to stop"),
    SignalSpec("teacher_logp", (TEACHER_LOGP_MEAN,), _key(TEACHER_LOGP_MEAN), "both", 0.08,
               outcome=False, family="teacher",
               description="mean teacher log-prob of sampled tokens (nats); jumps at onset"),
)}

DEFAULT_SIGNALS: tuple[str, ...] = tuple(SIGNALS)


def signal_values(metrics: Mapping[str, float], names: tuple[str, ...] = DEFAULT_SIGNALS) -> dict[str, float]:
    """Raw value of each named signal in one step's metrics (NaN where the metrics lack it)."""
    return {name: SIGNALS[name].value(metrics) for name in names}


@dataclass
class Baseline:
    """Centre and scale of one signal: robust warm-up estimate, then an EWMA over healthy steps.

    After the warm-up the EWMA weight is ``max(1/n, weight of the half-life)``, i.e. a plain running mean
    until there are enough steps for the half-life to matter, and each step's deviation is clipped at
    ``clip`` scales (a Huber-style update: an outlier nudges the baseline but cannot drag it, and the
    variance is not biased low the way dropping large values would bias it). The scale is inflated by
    ``1 + 2/n`` because a spread estimated from a handful of steps is often far too small.
    """

    floor: float
    warmup: int                 # values needed before z-scores are given
    halflife: float             # EWMA half-life in steps after warm-up; 0 freezes the warm-up estimate
    clip: float = 2.0           # deviations larger than this many scales are clipped when adapting
    values: list[float] | None = None
    mean: float = math.nan
    var: float = math.nan
    n: int = 0                  # values the estimate is based on

    @property
    def ready(self) -> bool:
        return math.isfinite(self.mean)

    @property
    def scale(self) -> float:
        if not self.ready:
            return math.nan
        return max(math.sqrt(self.var) * (1.0 + 2.0 / max(self.n, 1)), self.floor)

    def z(self, x: float) -> float:
        """Standardised value (NaN until the warm-up is complete or when x is NaN)."""
        if not self.ready or not math.isfinite(x):
            return math.nan
        return (x - self.mean) / self.scale

    def observe(self, x: float, *, adapt: bool) -> None:
        """Feed a value: collected during warm-up; afterwards it moves the baseline only when ``adapt``."""
        if not math.isfinite(x):
            return
        if not self.ready:
            self.values = [*(self.values or []), x]
            if len(self.values) >= self.warmup:
                arr = np.asarray(self.values)
                centre = float(np.median(arr))
                mad = float(np.median(np.abs(arr - centre))) * 1.4826  # consistent with sd for normal data
                # With a handful of values MAD can be 0 or tiny; the sample sd bounds it below.
                spread = max(mad, float(arr.std(ddof=1)) if len(arr) > 1 else 0.0)
                self.mean, self.var, self.n = centre, spread ** 2, len(arr)
                self.values = None
            return
        if adapt and self.halflife > 0:
            self.n += 1
            a = max(1.0 / self.n, 1.0 - 0.5 ** (1.0 / self.halflife))
            limit = self.clip * self.scale
            d = min(limit, max(-limit, x - self.mean))
            self.mean += a * d
            self.var = (1.0 - a) * (self.var + a * d * d)

    def state_dict(self) -> dict[str, Any]:
        """What the baseline has learnt (floor, warmup, halflife and clip come from the settings)."""
        return {"values": None if self.values is None else [float(v) for v in self.values],
                "mean": encode_float(self.mean), "var": encode_float(self.var), "n": int(self.n)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        values = None if state["values"] is None else [decode_float(v) for v in state["values"]]
        mean, var, n = decode_float(state["mean"]), decode_float(state["var"]), int(state["n"])
        self.values, self.mean, self.var, self.n = values, mean, var, n  # all parsed first: no half-loaded state
