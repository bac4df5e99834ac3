"""Collapse episodes: each sustained stretch of truncation at or above the collapse level.

An episode is a maximal run of consecutive truncation regimes (:mod:`opdwatch.changepoints`) whose level
is at least ``collapse_level``. Regimes are at least ``min_size`` steps and one-step spikes are filtered out
before segmenting, so a spike that recovers is never an episode, while a noisy 0.2-0.6 regime after a
collapse, whose single steps cross 0.5 now and then, is not one either (its level is 0.4).

- ``start``: the first step at or above the collapse level, walked back from the episode's first regime
  over the steps just before it that are already at the level (the cost blurs where a regime begins).
  The onset (:mod:`opdwatch.onset`) is the first *raised* step, so a collapse that ramps up
  (0.11 -> 0.23 -> 0.69 -> 0.92) has its onset at the 0.11 step and its episode from the 0.69 step.
- ``peak_step`` / ``peak``: the highest truncation rate inside the episode.
- ``end``: the last step at or above the collapse level before the level falls (walked forward over the
  steps right after the last regime that are still at the collapse level, as the start is walked back),
  or None when the episode reaches the last recorded step (still collapsed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from opdwatch.changepoints import Regime


@dataclass(frozen=True)
class Episode:
    start: int
    peak_step: int
    peak: float
    end: int | None     # None: ongoing at the last step
    level: float        # mean truncation rate over the episode's regimes

    @property
    def ongoing(self) -> bool:
        return self.end is None

    def describe(self) -> str:
        span = f"steps {self.start}-{self.end}" if self.end is not None else f"since step {self.start}"
        return f"collapse {span}, peak {self.peak:.2f} at step {self.peak_step}"

    def as_dict(self) -> dict[str, object]:
        return {"start": self.start, "peak_step": self.peak_step, "peak": self.peak, "end": self.end,
                "level": self.level}


def find_episodes(steps: np.ndarray, values: np.ndarray, regimes: list[Regime] | tuple[Regime, ...], *,
                  collapse_level: float = 0.5) -> list[Episode]:
    """Episodes of a truncation series (``steps``/``values`` in step order, ``regimes`` of it)."""
    out: list[Episode] = []
    i = 0
    while i < len(regimes):
        if regimes[i].level < collapse_level:
            i += 1
            continue
        j = i
        while j + 1 < len(regimes) and regimes[j + 1].level >= collapse_level:
            j += 1
        out.append(_episode(steps, values, regimes, i, j, collapse_level))
        i = j + 1
    return out


def _episode(steps: np.ndarray, values: np.ndarray, regimes: list[Regime] | tuple[Regime, ...], i: int, j: int,
             collapse_level: float) -> Episode:
    first, last = regimes[i], regimes[j]
    high = values >= collapse_level
    lo = int(np.searchsorted(steps, first.start))
    floor = int(np.searchsorted(steps, regimes[i - 1].start)) if i > 0 else 0
    while lo > floor and high[lo - 1]:  # walked back over steps already at the level
        lo -= 1
    hi = int(np.searchsorted(steps, last.end, side="right"))  # exclusive
    ongoing = j == len(regimes) - 1
    if not ongoing:  # walked forward over steps still at the level (the cost blurs where a noisy regime
        ceiling = int(np.searchsorted(steps, regimes[j + 1].end, side="right"))  # begins)
        while hi < ceiling and high[hi]:
            hi += 1
    at = lo + np.flatnonzero(high[lo:hi])  # the episode runs from its first to its last step at the level
    if len(at):
        lo, hi = int(at[0]), int(at[-1]) + 1
    k = lo + int(np.argmax(values[lo:hi]))
    weights = np.array([r.steps for r in regimes[i:j + 1]], dtype=float)
    level = float(np.average([r.level for r in regimes[i:j + 1]], weights=weights))
    return Episode(start=int(steps[lo]), peak_step=int(steps[k]), peak=float(values[k]),
                   end=None if ongoing else int(steps[hi - 1]), level=level)


def spans(episodes: list[Episode] | tuple[Episode, ...]) -> list[tuple[int, int | None, str]]:
    """(start, end or None, description) of each episode: what the shared figures shade."""
    return [(e.start, e.end, e.describe()) for e in episodes]
