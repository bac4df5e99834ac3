"""Regimes of a step series: every level change, found by penalised multiple-changepoint segmentation.

    regimes = segment_rate(steps, truncation_rate, rollouts)      # truncation: a proportion of n rollouts
    regimes = segment_length(steps, mean_length)                  # mean response length (tokens)

Method (docs/analysis.md has the settings, why, and how they were chosen):

1. **Variance-stabilised series.** A truncation rate is k truncated of n rollouts; its binomial noise is
   largest at 0.5 and vanishes at 0 and 1, so a quiet 0.03 regime and a noisy 0.4 one cannot share one
   noise scale. The Anscombe arcsine transform ``asin(sqrt((k + 3/8) / (n + 3/4)))`` has sd ~ 1/(2 sqrt(n))
   at every level, also near 0 where the plain arcsine breaks down. Length uses ``log`` (relative change).
2. **PELT** (Killick, Fearnhead & Eckley 2012): the exact minimiser of ``sum(segment cost) + penalty x
   segments`` over every segmentation whose segments have at least ``min_size`` steps, with PELT's pruning.
   The cost is the Gaussian negative log-likelihood with each segment's own mean *and* variance
   (``m log var``): a post-collapse regime that swings 0.2-0.6 is one noisy segment, not a staircase of
   level changes, without any global noise estimate (an L2 cost needs one, and a long quiet phase makes
   it the quiet noise). Each segment's variance is floored at the binomial variance of the stabilised
   rate (1/(4n)): a stretch of all-zero steps would otherwise have zero variance and an unbounded
   likelihood.
3. **Penalty** ``penalty x log(N)`` for N steps: BIC's, a changepoint adds a location, a mean and a
   variance (3 log N).
4. **Spike-free levels.** A regime's level is the mean of the median-of-3 filtered raw values, so a
   one-step spike that recovers (Stable-OPD's lone 0.33) never makes a raised level. The likelihood may
   still give such a spike a short segment of its own; neighbouring regimes whose levels differ by less
   than ``merge_within`` (0.05) are merged back into one, closest pair first. (Filtering the series
   itself before segmenting was worse: the median's flat runs inside a noisy regime look like
   low-variance segments to the cost.)

The paper (Demystifying OPD) reads the onset off the curve by eye; this is our formalisation of it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

COSTS = ("normal", "l2")


@dataclass(frozen=True)
class ChangepointSettings:
    """How :func:`segment_rate` / :func:`segment_length` segment a series (defaults: docs/analysis.md)."""

    cost: str = "normal"        # "normal": per-segment mean and variance; "l2": mean only (compared in the docs)
    penalty: float = 3.0        # x log(N) per changepoint; for "l2" also x the noise variance
    min_size: int = 3           # steps per segment: shorter blips are not regimes
    median3: bool = False       # median-of-3 the series before segmenting (off: see the module doc)
    merge_within: float = 0.05  # neighbouring regimes closer than this (spike-free levels) are one
    length_sd_floor: float = 0.02  # sd floor of log mean length (2% relative): float noise must not split

    def validate(self) -> None:
        if self.cost not in COSTS:
            raise ValueError(f"cost must be one of {COSTS}, got {self.cost!r}")
        if not (self.penalty > 0 and self.min_size >= 1 and self.length_sd_floor > 0):
            raise ValueError("penalty and length_sd_floor must be > 0, min_size >= 1")


@dataclass(frozen=True)
class Regime:
    """One segment: steps ``start``..``end`` (inclusive) at mean ``level`` (raw units, spikes removed)."""

    start: int
    end: int
    steps: int      # recorded steps in it (steps may be missing)
    level: float    # mean of the median-of-3 filtered raw values
    sd: float       # their standard deviation

    def as_dict(self) -> dict[str, object]:
        return {"start": self.start, "end": self.end, "steps": self.steps, "level": self.level, "sd": self.sd}


# ------------------------------------------------------------------------------------------- series
def segment_rate(steps: Sequence[int] | np.ndarray, rate: Sequence[float] | np.ndarray,
                 rollouts: Sequence[float] | np.ndarray | None = None,
                 settings: ChangepointSettings | None = None) -> list[Regime]:
    """Regimes of a per-step proportion (truncation rate) of ``rollouts`` rollouts per step (None: the
    noise floor is estimated from the series itself)."""
    settings = settings or ChangepointSettings()
    y = np.clip(np.asarray(rate, dtype=float), 0.0, 1.0)
    n = np.full(len(y), np.nan) if rollouts is None else np.asarray(rollouts, dtype=float)
    z = stabilised_rate(y, n)
    known = n[np.isfinite(n) & (n > 0)]
    floor = 1.0 / (4.0 * float(np.median(known))) if len(known) else max(noise_sd(z), 0.02) ** 2
    return _regimes(np.asarray(steps), y, z, floor, settings)


def segment_length(steps: Sequence[int] | np.ndarray, length: Sequence[float] | np.ndarray,
                   settings: ChangepointSettings | None = None) -> list[Regime]:
    """Regimes of mean response length (segmented on log length: inflation is a relative change)."""
    settings = settings or ChangepointSettings()
    y = np.asarray(length, dtype=float)
    z = np.log(np.maximum(y, 1.0))
    floor = max(noise_sd(median3(z) if settings.median3 else z), settings.length_sd_floor) ** 2
    return _regimes(np.asarray(steps), y, z, floor, settings)


def stabilised_rate(rate: np.ndarray, rollouts: np.ndarray) -> np.ndarray:
    """Anscombe's arcsine transform of k = rate x n of n; plain arcsine-sqrt where n is unknown."""
    n = np.where(np.isfinite(rollouts) & (rollouts > 0), rollouts, np.nan)
    k = rate * n
    anscombe = np.arcsin(np.sqrt((k + 0.375) / (n + 0.75)))
    return np.where(np.isfinite(anscombe), anscombe, np.arcsin(np.sqrt(rate)))


def median3(x: np.ndarray) -> np.ndarray:
    """Running median of 3 (the ends kept): drops one-step spikes, keeps steps and monotone ramps."""
    if len(x) < 3:
        return x.copy()
    out = x.copy()
    out[1:-1] = np.median(np.stack([x[:-2], x[1:-1], x[2:]]), axis=0)
    return out


def noise_sd(x: np.ndarray) -> float:
    """Robust noise sd: the MAD of first differences / sqrt(2) (level shifts barely move a median)."""
    if len(x) < 3:
        return 0.0
    d = np.diff(x)
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / math.sqrt(2.0))


def _regimes(steps: np.ndarray, raw: np.ndarray, z: np.ndarray, var_floor: float,
             settings: ChangepointSettings) -> list[Regime]:
    settings.validate()
    if len(z) == 0:
        return []
    zf = median3(z) if settings.median3 else z
    yf = median3(raw)  # levels are always spike-free
    if settings.cost == "normal":
        pen = settings.penalty * math.log(max(len(z), 2))
    else:  # L2: the penalty scales with the noise variance (MAD of differences, floored at binomial)
        pen = settings.penalty * math.log(max(len(z), 2)) * max(noise_sd(z) ** 2, var_floor)
    starts = pelt(zf, cost=settings.cost, penalty=pen, min_size=settings.min_size, var_floor=var_floor)
    bounds = _merged([*starts, len(z)], yf, settings.merge_within)
    return [Regime(start=int(steps[a]), end=int(steps[b - 1]), steps=b - a, level=float(np.mean(yf[a:b])),
                   sd=float(np.std(yf[a:b]))) for a, b in zip(bounds[:-1], bounds[1:])]


def _merged(bounds: list[int], yf: np.ndarray, within: float) -> list[int]:
    """Drop the boundary between neighbours whose spike-free levels differ by less than ``within``
    (closest pair first): a spike is a segment of its own for the likelihood, not a regime."""
    bounds = list(bounds)
    while len(bounds) > 2:
        levels = [float(np.mean(yf[a:b])) for a, b in zip(bounds[:-1], bounds[1:])]
        gaps = [abs(levels[i + 1] - levels[i]) for i in range(len(levels) - 1)]
        i = int(np.argmin(gaps))
        if gaps[i] >= within:
            break
        del bounds[i + 1]
    return bounds


# --------------------------------------------------------------------------------------------- PELT
def pelt(x: np.ndarray, *, cost: str = "normal", penalty: float, min_size: int = 3,
         var_floor: float = 1e-6) -> list[int]:
    """Start indices of the optimal segments of ``x`` (the first is 0) under ``cost`` + ``penalty`` per
    changepoint, each segment at least ``min_size`` long (one segment if ``x`` is shorter than two)."""
    n = len(x)
    if n < 2 * min_size:
        return [0]
    c1 = np.concatenate([[0.0], np.cumsum(x)])
    c2 = np.concatenate([[0.0], np.cumsum(x * x)])

    def seg_cost(s: np.ndarray, t: int) -> np.ndarray:
        m = t - s
        s1, s2 = c1[t] - c1[s], c2[t] - c2[s]
        if cost == "l2":
            return s2 - s1 * s1 / m
        var = np.maximum(s2 / m - (s1 / m) ** 2, var_floor)
        return m * np.log(var)

    best = np.full(n + 1, np.inf)
    best[0] = -penalty
    prev = np.zeros(n + 1, dtype=np.int64)
    cands = np.array([0], dtype=np.int64)
    # PELT pruning, delayed by min_size: F(s) + C(s, t) > F(t) means a changepoint at t beats s for every
    # later end t' >= t + min_size (costs are additive); ends closer than that cannot use t yet, so s
    # leaves the candidates only then (at `expires[s]`).
    expires = np.full(n + 1, n + 1, dtype=np.int64)
    for t in range(min_size, n + 1):
        new = t - min_size
        if new >= min_size:  # a start at `new` leaves a first part of at least min_size steps
            cands = np.append(cands, new)
        cands = cands[expires[cands] > t]
        total = best[cands] + seg_cost(cands, t)
        i = int(np.argmin(total))
        best[t] = total[i] + penalty
        prev[t] = cands[i]
        beaten = cands[total > best[t]]
        expires[beaten] = np.minimum(expires[beaten], t + min_size)
    starts, t = [], n
    while t > 0:
        t = int(prev[t])
        starts.append(t)
    return sorted(starts)
