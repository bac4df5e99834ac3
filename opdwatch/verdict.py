"""A run's health verdict, with its reasons: healthy, inflating or collapsed.

- **collapsed**: the truncation rate is at or above ``collapse_level`` (0.5) sustained at the end: the
  median of the last ``tail`` train steps and most of those steps.
- **inflating**: not collapsed, but the onset finder found a level shift, or truncation / mean length is
  rising into the end (last ``tail`` steps clearly above the first ones).
- **healthy**: neither.

Validation truncation and accuracy, the repetitive-token share and the EOS advantage are added to the
reasons when the run has them, because they are what a researcher checks next.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from opdwatch.onset import LENGTH, TRUNCATION, Onset, find_onset

HEALTHY, INFLATING, COLLAPSED = "healthy", "inflating", "collapsed"


@dataclass(frozen=True)
class Verdict:
    label: str                 # healthy | inflating | collapsed
    reasons: tuple[str, ...]
    onset: Onset

    def as_dict(self) -> dict[str, object]:
        return {"label": self.label, "reasons": list(self.reasons), "onset": self.onset.as_dict()}


def verdict(series: pl.DataFrame, onset: Onset | None = None, *, collapse_level: float = 0.5,
            tail: int = 5, rise: float = 0.15) -> Verdict:
    """Judge a :func:`opdwatch.series.step_series` frame (``onset`` is computed when not given)."""
    onset = onset if onset is not None else find_onset(series)
    trunc = _values(series, TRUNCATION)
    reasons: list[str] = []
    if len(trunc) == 0:
        return Verdict(HEALTHY, ("no train steps with a truncation rate yet",), onset)
    end = trunc[-tail:]
    end_median = float(np.median(end))
    label = HEALTHY
    if end_median >= collapse_level and np.mean(end >= collapse_level) > 0.5:
        label = COLLAPSED
        reasons.append(f"truncation rate {end_median:.2f} (median of the last {len(end)} steps) >= {collapse_level}")
    if onset.step is not None:
        label = label if label == COLLAPSED else INFLATING
        reasons.append(f"onset at step {onset.step}: {onset.evidence}")
    elif label == HEALTHY:
        reasons.append(f"no onset ({onset.evidence})")
    if label == HEALTHY:
        for column, name, fmt in ((TRUNCATION, "truncation rate", ".2f"), (LENGTH, "mean length", ".1f")):
            values = _values(series, column)
            if len(values) >= 2 * tail:
                head, last = float(np.mean(values[:tail])), float(np.mean(values[-tail:]))
                rising = last - head >= rise if column == TRUNCATION else last >= (1 + 2 * rise) * max(head, 1e-9)
                if rising:
                    label = INFLATING
                    reasons.append(f"{name} rising: {head:{fmt}} over the first {tail} steps -> {last:{fmt}} over "
                                   f"the last {tail}")
    if label == HEALTHY:
        reasons.append(f"truncation rate {end_median:.2f} at the end")
    if label == INFLATING and onset.step is not None and end_median < (onset.before or 0) + 0.5 * (
            (onset.after or 0) - (onset.before or 0)):
        reasons.append(f"truncation has since fallen back to {end_median:.2f}")
    reasons.extend(_context(series))
    return Verdict(label, tuple(reasons), onset)


def _context(series: pl.DataFrame) -> list[str]:
    out = []
    for column, name in (("val/rollout/truncation_rate", "validation truncation"),
                         ("val/rollout/accuracy", "validation accuracy"),
                         ("token/repetitive_share", "repetitive-token share"),
                         ("token/eos_advantage_mean", "EOS advantage")):
        values = _values(series, column)
        if len(values):
            first, last = values[0], values[-1]
            out.append(f"{name} {first:.3g} at the start, {last:.3g} at the end")
    return out


def _values(series: pl.DataFrame, column: str) -> np.ndarray:
    if column not in series.columns:
        return np.zeros(0)
    return series.sort("step").select(pl.col(column).cast(pl.Float64).fill_nan(None)).drop_nulls()[column].to_numpy()
