"""Offline onset finder: the step where length inflation / truncation collapse began, with its evidence.

Method (one series at a time, steps in order, nulls dropped):

1. Two-segment least squares: the split k that minimises SSE(y[:k]) + SSE(y[k:]) among splits whose
   right segment is higher (inflation only goes up), each segment at least ``min_segment`` steps.
2. Accept it only for a real level shift: the after-level reaches ``min_level`` (truncation rate: 0.3;
   for length, a relative rise of ``min_length_ratio``) and the jump is at least ``min_jump_sigma``
   times the noise sigma (pooled within-segment standard deviation, floored so a flat-zero series is not
   infinitely sensitive). A stationary noisy run has no such split; a transient spike is too short to
   move a segment mean that far.
3. Walk back from the split while the previous step is still raised (above both the before-level's
   median + 3 robust sigma and the before-level + 10% of the jump): a collapse that ramps over a few
   steps (0.06 -> 0.19 -> 0.56 -> 0.95) began at the first raised step, not at the ramp's midpoint,
   while one noisy step just before an abrupt jump is not taken for its start.

The truncation rate decides; mean response length is tried when truncation shows no onset (inflation
before the budget is hit). Supporting series (repetition, repetitive-token share, advantages, log-probs)
are summarised before/after the same split as evidence.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

TRUNCATION = "rollout/truncation_rate"
LENGTH = "rollout/mean_length"
# Shown as evidence, before -> after the split, when the frame has them.
SUPPORTING = (
    ("rollout/repetition_rate", "repetition rate"),
    ("rollout/mean_length", "mean length"),
    ("token/repetitive_share", "repetitive-token share"),
    ("token/adv_repetitive_mean", "advantage of repetitive tokens"),
    ("token/adv_regular_mean", "advantage of regular tokens"),
    ("token/eos_advantage_mean", "EOS advantage"),
    ("token/teacher_logp_mean", "teacher log-prob"),
    ("val/rollout/accuracy", "validation accuracy"),
)
_SIGMA_FLOOR = {TRUNCATION: 0.02, LENGTH: 0.5}  # rates are multiples of 1/rollouts; length in tokens


@dataclass(frozen=True)
class Onset:
    """Where inflation began (``step`` None when no onset was found) and why."""

    step: int | None
    series: str                       # the column the decision was made on
    before: float | None = None       # mean level before the split
    after: float | None = None        # mean level from the split on
    sigma: float | None = None        # noise sigma used for the jump test
    jump_sigma: float | None = None   # (after - before) / sigma
    change_point: int | None = None   # the least-squares split step (onset is at or before it)
    evidence: str = ""
    supporting: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {"step": self.step, "series": self.series, "before": self.before, "after": self.after,
                "sigma": self.sigma, "jump_sigma": self.jump_sigma, "change_point": self.change_point,
                "evidence": self.evidence,
                "supporting": {k: list(v) for k, v in self.supporting.items()}}


def find_onset(series: pl.DataFrame, *, min_level: float = 0.3, min_jump_sigma: float = 4.0,
               min_length_ratio: float = 1.3, min_segment: int = 3) -> Onset:
    """Onset of truncation collapse in a :func:`opdwatch.series.step_series` frame (see module doc)."""
    trunc = _fit(series, TRUNCATION, min_segment)
    if trunc is not None:
        ok = trunc.after >= min_level and trunc.jump >= min_jump_sigma * trunc.sigma
        if ok:
            return _accept(series, trunc, f"after-level {trunc.after:.2f} >= {min_level}")
    length = _fit(series, LENGTH, min_segment)
    if length is not None and length.before > 0:
        ok = length.after >= min_length_ratio * length.before and length.jump >= min_jump_sigma * length.sigma
        if ok:
            return _accept(series, length, f"length x{length.after / length.before:.2f} >= x{min_length_ratio}")
    return _reject(trunc, length, min_level, min_jump_sigma)


@dataclass(frozen=True)
class _Fit:
    column: str
    steps: np.ndarray
    values: np.ndarray
    split: int          # index of the first step of the after-segment
    before: float
    after: float
    sigma: float

    @property
    def jump(self) -> float:
        return self.after - self.before


def _fit(frame: pl.DataFrame, column: str, min_segment: int) -> _Fit | None:
    """Best upward two-segment split of ``column``, or None when the series is too short or never rises."""
    if column not in frame.columns:
        return None
    data = frame.select("step", pl.col(column).cast(pl.Float64).fill_nan(None)).drop_nulls().sort("step")
    y = data[column].to_numpy()
    n = len(y)
    if n < 2 * min_segment:
        return None
    c1 = np.concatenate([[0.0], np.cumsum(y)])
    c2 = np.concatenate([[0.0], np.cumsum(y * y)])
    k = np.arange(min_segment, n - min_segment + 1)
    left_mean = c1[k] / k
    right_mean = (c1[n] - c1[k]) / (n - k)
    sse = (c2[k] - k * left_mean ** 2) + ((c2[n] - c2[k]) - (n - k) * right_mean ** 2)
    sse = np.where(right_mean > left_mean, sse, np.inf)
    if not np.isfinite(sse).any():
        return None
    i = int(np.argmin(sse))
    split = int(k[i])
    sigma = max(float(np.sqrt(max(sse[i], 0.0) / max(n - 2, 1))), _SIGMA_FLOOR.get(column, 1e-6))
    return _Fit(column, data["step"].to_numpy(), y, split, float(left_mean[i]), float(right_mean[i]), sigma)


def _accept(frame: pl.DataFrame, fit: _Fit, level_reason: str) -> Onset:
    start = _walk_back(fit)
    step = int(fit.steps[start])
    cp = int(fit.steps[fit.split])
    supporting = _supporting(frame, cp)
    name = "truncation rate" if fit.column == TRUNCATION else "mean response length"
    lines = [
        f"{name} rose from {fit.before:.3g} (steps {int(fit.steps[0])}-{int(fit.steps[fit.split - 1])}) to "
        f"{fit.after:.3g} (steps {cp}-{int(fit.steps[-1])}), a jump of {fit.jump / fit.sigma:.1f} sigma "
        f"(sigma {fit.sigma:.3g}; {level_reason})",
        f"least-squares change-point at step {cp}" + (f"; first raised step {step}" if step != cp else ""),
    ]
    moved = [f"{label} {_fmt(b)} -> {_fmt(a)}" for (col, label), (b, a)
             in ((c, supporting[c[0]]) for c in SUPPORTING if c[0] in supporting) if col != fit.column]
    if moved:
        lines.append("at the same split: " + ", ".join(moved))
    return Onset(step=step, series=fit.column, before=fit.before, after=fit.after, sigma=fit.sigma,
                 jump_sigma=fit.jump / fit.sigma, change_point=cp, evidence="; ".join(lines), supporting=supporting)


def _reject(trunc: _Fit | None, length: _Fit | None, min_level: float, min_jump_sigma: float) -> Onset:
    if trunc is None:
        return Onset(step=None, series=TRUNCATION, evidence="too few steps with a truncation rate to look for an "
                     "onset" if length is None else "truncation rate never rises; no length inflation either")
    why = []
    if trunc.after < min_level:
        why.append(f"best upward split only reaches {trunc.after:.3g} < {min_level}")
    if trunc.jump < min_jump_sigma * trunc.sigma:
        why.append(f"its jump is {trunc.jump / trunc.sigma:.1f} sigma < {min_jump_sigma}")
    text = f"no onset: truncation rate {trunc.before:.3g} -> {trunc.after:.3g} at best ({'; '.join(why)})"
    if length is not None:
        text += f"; mean length {length.before:.3g} -> {length.after:.3g} is no inflation either"
    return Onset(step=None, series=TRUNCATION, before=trunc.before, after=trunc.after, sigma=trunc.sigma,
                 jump_sigma=trunc.jump / trunc.sigma, change_point=None, evidence=text)


def _walk_back(fit: _Fit) -> int:
    """First index of the run of raised steps that ends at the split (see module doc, step 3)."""
    before = fit.values[: fit.split]
    median = float(np.median(before))
    mad = float(np.median(np.abs(before - median))) * 1.4826
    threshold = max(median + 3.0 * max(mad, _SIGMA_FLOOR.get(fit.column, 1e-6)), fit.before + 0.1 * fit.jump)
    start = fit.split
    while start > 0 and fit.values[start - 1] > threshold:
        start -= 1
    return start


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
