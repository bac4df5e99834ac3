"""Sequential change detectors as pure functions of (state, observation) -> new state.

Both detectors accumulate evidence that a series has left its reference level and forget it slowly when
it returns, so a single noisy step moves them little while a sustained shift adds up step by step.

* :func:`cusum_update` — Page's two-sided CUSUM on a *standardised* value z (reference mean 0, unit scale):
  ``S+ = max(0, S+ + z - k)``, ``S- = max(0, S- - z - k)``. ``k`` is the allowance (half the shift to
  detect, in scale units) and the caller compares S+/S- with a decision threshold h. A shift of d scale
  units is flagged after about ``h / (d - k)`` steps; under no change the expected run length grows
  exponentially in h.
* :func:`page_hinkley_update` — the Page-Hinkley test as implemented by ``river.drift.PageHinkley`` (on the
  raw value, against the running mean of everything seen since the last reset; used as a benchmark
  baseline). It fires when the cumulative deviation ``sum(x - mean - delta)`` rises ``threshold`` above its
  minimum (mode "up"), or the mirrored test for decreases.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Cusum:
    up: float = 0.0    # evidence of an increase (S+), in scale units
    down: float = 0.0  # evidence of a decrease (S-)


def cusum_update(state: Cusum, z: float, *, k: float = 0.5, cap: float = math.inf) -> Cusum:
    """One two-sided CUSUM step on standardised value ``z``; a NaN observation leaves the state unchanged.

    ``cap`` bounds both sums so that, after a long excursion, the statistic can fall back below the
    threshold within ``(cap - h) / k`` healthy steps (a detector that has to relax an intervention must
    be able to say "healthy again" in reasonable time).
    """
    if not math.isfinite(z):
        return state
    return Cusum(up=min(cap, max(0.0, state.up + z - k)), down=min(cap, max(0.0, state.down - z - k)))


@dataclass(frozen=True)
class PageHinkley:
    """State of river's PageHinkley (two-sided, with forgetting factor alpha)."""

    n: int = 0
    mean: float = 0.0
    sum_increase: float = 0.0
    sum_decrease: float = 0.0
    min_increase: float = math.inf
    max_decrease: float = -1.0  # river starts it at -1, not -inf; kept for fidelity
    drift: bool = False


def page_hinkley_update(state: PageHinkley, x: float, *, min_instances: int = 30, delta: float = 0.005,
                        threshold: float = 50.0, alpha: float = 1 - 0.0001, mode: str = "both") -> PageHinkley:
    """One step of river's ``drift.PageHinkley.update`` (river >= 0.19 semantics).

    Like river, the statistics reset on the update *after* a detection, and nothing fires before
    ``min_instances`` values have been seen since the last reset. ``mode``: "up", "down" or "both".
    """
    if mode not in ("up", "down", "both"):
        raise ValueError(f"mode must be 'up', 'down' or 'both', got {mode!r}")
    if state.drift:
        state = PageHinkley()
    n = state.n + 1
    mean = state.mean + (x - state.mean) / n
    dev = x - mean
    s_inc = alpha * state.sum_increase + dev - delta
    s_dec = alpha * state.sum_decrease + dev + delta
    min_inc = min(state.min_increase, s_inc)
    max_dec = max(state.max_decrease, s_dec)
    drift = False
    if n >= min_instances:
        up, down = s_inc - min_inc > threshold, max_dec - s_dec > threshold
        drift = (up and mode in ("up", "both")) or (down and mode in ("down", "both"))
    return replace(state, n=n, mean=mean, sum_increase=s_inc, sum_decrease=s_dec, min_increase=min_inc,
                   max_decrease=max_dec, drift=drift)
