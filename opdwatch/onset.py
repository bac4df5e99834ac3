"""Offline onset finder: the step where length inflation / truncation collapse began, with its evidence.

Method (one series at a time, steps in order, nulls dropped):

1. **Regimes.** :mod:`opdwatch.changepoints` segments the truncation rate into every regime it has
   (PELT on the variance-stabilised rate, a per-segment mean-and-variance cost, one-step spikes removed):
   collapse -> partial recovery -> relapse is several regimes, not one upward split.
2. **Onset regime.** The first regime whose level marks inflation or collapse: at least ``min_level``
   (0.3) and at least ``min_rise`` (0.15) above the quiet regime before it. A stationary noisy run is one
   regime (no onset); a spike that recovers is no regime at all.
3. **Walk back** from the regime's first step while the previous step is still raised (above both the
   quiet regime's median + 3 robust sigma and its level + 10% of the jump): a collapse that ramps over a
   few steps (0.06 -> 0.19 -> 0.56 -> 0.95) began at the first raised step, not where the segmentation
   put the level change, while one noisy step just before an abrupt jump is not taken for its start.

The truncation rate decides; mean response length is tried when truncation shows no onset (inflation
before the budget is hit), with "marks inflation" meaning ``min_length_ratio`` x the first regime's length.
Supporting series (repetition, repetitive-token share, advantages, log-probs) are summarised before/after
the changepoint as evidence.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from opdwatch.changepoints import ChangepointSettings, Regime, segment_length, segment_rate
from opdwatch.metric_defs import (
    ADV_REGULAR_MEAN,
    ADV_REPETITIVE_MEAN,
    EOS_ADVANTAGE_MEAN,
    MEAN_LENGTH,
    REPETITION_RATE,
    REPETITIVE_SHARE,
    ROLLOUT_COUNT,
    TEACHER_LOGP_MEAN,
    TRUNCATION_RATE,
    VAL_ACCURACY,
)
from opdwatch.text import plural

TRUNCATION = TRUNCATION_RATE
LENGTH = MEAN_LENGTH
# Shown as evidence, before -> after the changepoint, when the frame has them.
SUPPORTING = (
    (REPETITION_RATE, "repetition rate"),
    (MEAN_LENGTH, "mean length"),
    (REPETITIVE_SHARE, "repetitive-token share"),
    (ADV_REPETITIVE_MEAN, "advantage of repetitive tokens"),
    (ADV_REGULAR_MEAN, "advantage of regular tokens"),
    (EOS_ADVANTAGE_MEAN, "EOS advantage"),
    (TEACHER_LOGP_MEAN, "teacher log-prob"),
    (VAL_ACCURACY, "validation accuracy"),
)
_SIGMA_FLOOR = {TRUNCATION: 0.02, LENGTH: 0.5}  # rates are multiples of 1/rollouts; length in tokens


@dataclass(frozen=True)
class Onset:
    """Where inflation began (``step`` None when no onset was found) and why."""

    step: int | None
    series: str                       # the column the decision was made on
    before: float | None = None       # mean level of the quiet regime before the onset regime
    after: float | None = None        # mean level of the onset regime
    sigma: float | None = None        # pooled within-regime sd of the two (raw units)
    jump_sigma: float | None = None   # (after - before) / sigma
    change_point: int | None = None   # first step of the onset regime (the onset is at or before it)
    evidence: str = ""
    supporting: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    regimes: tuple[Regime, ...] = ()  # every truncation-rate regime of the run, in step order

    def as_dict(self) -> dict[str, object]:
        return {"step": self.step, "series": self.series, "before": self.before, "after": self.after,
                "sigma": self.sigma, "jump_sigma": self.jump_sigma, "change_point": self.change_point,
                "evidence": self.evidence,
                "supporting": {k: list(v) for k, v in self.supporting.items()}}


@dataclass(frozen=True)
class _Series:
    column: str
    steps: np.ndarray
    values: np.ndarray
    regimes: list[Regime]


def find_onset(series: pl.DataFrame, *, min_level: float = 0.3, min_rise: float = 0.15,
               min_length_ratio: float = 1.3, changepoints: ChangepointSettings | None = None) -> Onset:
    """Onset of truncation collapse in a :func:`opdwatch.series.step_series` frame (see module doc)."""
    trunc = truncation_regimes(series, changepoints)
    regimes = tuple(trunc.regimes) if trunc is not None else ()
    if trunc is not None:
        i = _first_raised(trunc.regimes, lambda r, q: r.level >= min_level and r.level - q.level >= min_rise)
        if i is not None:
            return _accept(series, trunc, i, f"level {trunc.regimes[i].level:.2f} >= {min_level}", regimes)
    length = _load(series, LENGTH)
    if length is not None:
        length = _Series(LENGTH, length[0], length[1], segment_length(length[0], length[1], changepoints))
        base = length.regimes[0].level
        i = _first_raised(length.regimes, lambda r, q: base > 0 and r.level >= min_length_ratio * max(base, q.level))
        if i is not None:
            ratio = length.regimes[i].level / base
            return _accept(series, length, i, f"length x{ratio:.2f} >= x{min_length_ratio}", regimes)
    return _reject(trunc, length, min_level, min_rise, regimes)


def truncation_regimes(series: pl.DataFrame, changepoints: ChangepointSettings | None = None) -> _Series | None:
    """The truncation-rate steps, values and regimes of ``series`` (None without a truncation rate)."""
    loaded = _load(series, TRUNCATION, extra=ROLLOUT_COUNT)
    if loaded is None:
        return None
    steps, values, counts = loaded
    return _Series(TRUNCATION, steps, values, segment_rate(steps, values, counts, changepoints))


def walk_back(steps: np.ndarray, values: np.ndarray, quiet: Regime, start: int, level: float,
              column: str = TRUNCATION) -> int:
    """First step of the run of raised steps that ends at ``start`` (the first step of a regime at
    ``level``) after the ``quiet`` regime (see module doc, step 3). Shared with the episode finder."""
    inside = (steps >= quiet.start) & (steps <= quiet.end)
    before = values[inside]
    median = float(np.median(before))
    mad = float(np.median(np.abs(before - median))) * 1.4826
    threshold = max(median + 3.0 * max(mad, _SIGMA_FLOOR.get(column, 1e-6)),
                    float(np.mean(before)) + 0.1 * (level - float(np.mean(before))))
    i = int(np.searchsorted(steps, start))
    lo = int(np.searchsorted(steps, quiet.start))
    while i > lo and values[i - 1] > threshold:
        i -= 1
    return int(steps[i])


def _first_raised(regimes: list[Regime], raised: Callable[[Regime, Regime], bool]) -> int | None:
    """Index of the first regime that is raised against the last quiet regime before it (regime 0 is
    the quiet reference; a run that starts raised has no onset)."""
    quiet = regimes[0] if regimes else None
    for i in range(1, len(regimes)):
        if raised(regimes[i], quiet):
            return i
        quiet = regimes[i] if regimes[i].level <= quiet.level else quiet  # a higher, unraised step is no baseline
    return None


def _accept(frame: pl.DataFrame, s: _Series, i: int, level_reason: str, regimes: tuple[Regime, ...]) -> Onset:
    onset_regime = s.regimes[i]
    quiet = _quiet_before(s.regimes, i)
    before = _mean(s, quiet.start, quiet.end)
    after = _mean(s, onset_regime.start, onset_regime.end)
    step = walk_back(s.steps, s.values, quiet, onset_regime.start, after, s.column)
    cp = onset_regime.start
    sigma = max(float(np.sqrt((_var(s, quiet) * quiet.steps + _var(s, onset_regime) * onset_regime.steps)
                              / (quiet.steps + onset_regime.steps))), _SIGMA_FLOOR.get(s.column, 1e-6))
    supporting = _supporting(frame, cp)
    name = "truncation rate" if s.column == TRUNCATION else "mean response length"
    lines = [
        f"{name} rose from {before:.3g} (steps {quiet.start}-{quiet.end}) to {after:.3g} (steps {cp}-"
        f"{onset_regime.end}), {(after - before) / sigma:.1f} sigma (sigma {sigma:.3g}; {level_reason})",
        f"changepoint at step {cp} (regime {i + 1} of {len(s.regimes)})"
        + (f"; first raised step {step}" if step != cp else ""),
    ]
    moved = [f"{label} {_fmt(b)} -> {_fmt(a)}" for (col, label), (b, a)
             in ((c, supporting[c[0]]) for c in SUPPORTING if c[0] in supporting) if col != s.column]
    if moved:
        lines.append("at the same changepoint: " + ", ".join(moved))
    return Onset(step=step, series=s.column, before=before, after=after, sigma=sigma,
                 jump_sigma=(after - before) / sigma, change_point=cp, evidence="; ".join(lines),
                 supporting=supporting, regimes=regimes)


def _reject(trunc: _Series | None, length: _Series | None, min_level: float, min_rise: float,
            regimes: tuple[Regime, ...]) -> Onset:
    if trunc is None:
        return Onset(step=None, series=TRUNCATION, evidence="too few steps with a truncation rate to look for an "
                     "onset" if length is None else "no truncation rate; no length inflation either")
    first, top = trunc.regimes[0], max(trunc.regimes, key=lambda r: r.level)
    if len(trunc.regimes) == 1:
        text = f"no onset: truncation rate stays in one regime, {first.level:.3g} (steps {first.start}-{first.end})"
    elif first.level >= min_level:
        text = (f"no onset: truncation rate is already {first.level:.3g} at the start (steps {first.start}-"
                f"{first.end}), no quiet regime before it")
    else:
        text = (f"no onset: {len(trunc.regimes)} truncation regimes, the highest {top.level:.3g} (steps "
                f"{top.start}-{top.end}) does not mark inflation (< {min_level} or < {min_rise} above the one before)")
    if length is not None:
        text += (f"; mean length {length.regimes[0].level:.3g} -> {length.regimes[-1].level:.3g} "
                 f"({plural(len(length.regimes), 'regime')}) is no inflation either")
    return Onset(step=None, series=TRUNCATION, before=first.level, after=top.level, evidence=text, regimes=regimes)


def _quiet_before(regimes: list[Regime], i: int) -> Regime:
    """The lowest regime before ``i`` since the last one at least as low as the first (the baseline the
    onset regime rose from)."""
    quiet = regimes[0]
    for r in regimes[1:i]:
        if r.level <= quiet.level:
            quiet = r
    return quiet


def _load(frame: pl.DataFrame, column: str, extra: str | None = None):  # noqa: ANN202 - tuple of arrays
    if column not in frame.columns:
        return None
    cols = [pl.col(column).cast(pl.Float64).fill_nan(None)]
    if extra is not None:
        cols.append(pl.col(extra).cast(pl.Float64) if extra in frame.columns else pl.lit(None, pl.Float64).alias(extra))
    data = frame.select("step", *cols).drop_nulls(column).sort("step")
    if data.height == 0:
        return None
    out = (data["step"].to_numpy(), data[column].to_numpy())
    if extra is None:
        return out
    counts = data[extra].to_numpy()
    return (*out, None if np.isnan(counts.astype(float)).all() else counts)


def _mean(s: _Series, a: int, b: int) -> float:
    return float(np.mean(s.values[(s.steps >= a) & (s.steps <= b)]))


def _var(s: _Series, r: Regime) -> float:
    return float(np.var(s.values[(s.steps >= r.start) & (s.steps <= r.end)]))


def _supporting(frame: pl.DataFrame, split_step: int) -> dict[str, tuple[float | None, float | None]]:
    out = {}
    for column, _ in SUPPORTING:
        if column not in frame.columns:
            continue
        col = pl.col(column).cast(pl.Float64).fill_nan(None)
        row = frame.select(col.filter(pl.col("step") < split_step).mean().alias("b"),
                           col.filter(pl.col("step") >= split_step).mean().alias("a")).row(0)
        if row[0] is not None or row[1] is not None:
            out[column] = (row[0], row[1])
    return out


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"
