"""A run's health verdict over its whole history: what happened, and where the run is now.

The truncation rate is segmented into regimes (:mod:`opdwatch.changepoints`), collapse episodes are
the sustained stretches at or above ``collapse_level`` (:mod:`opdwatch.episodes`), and the label reads
both: the worst that happened, then where the run is now (the current regime, i.e. the last one).

==========================  ===================================================================
label                       when
==========================  ===================================================================
collapsed                   an episode reaches the last step: truncation >= 0.5, sustained
collapsed, recovering       an episode ended, but the current regime is still raised (a partial
                            recovery, e.g. a noisy 0.2-0.6 regime after a 0.95 collapse)
collapsed, recovered        an episode ended and the current regime is back near the quiet level
                            (below ``raised_level`` and less than ``min_rise`` above the start)
degraded                    no episode; the current regime is raised (>= ``raised_level``) below
                            the collapse level for at least ``chronic_steps`` and not rising
inflating                   no episode; truncation raised but recent or still rising, or up by
                            ``min_rise`` on the first regime, or mean length inflated
degraded, recovered         no episode; a raised regime (the onset) in the past, back to quiet now
healthy                     none of these
no truncation data          no train step has a known truncation rate (NaN or missing in every row,
                            and no rollouts to compute it from): nothing to judge, not "healthy"
==========================  ===================================================================

Steps whose truncation rate is unknown are left out (regimes, episodes and the current level are computed
over the known steps; :mod:`opdwatch.step_table` decides which are unknown, and the reader warns about them).

The paper labels runs by their final accuracy and truncation; we keep the history because a collapse
that partly recovers is still a collapse (and the last few steps alone called the demo "inflating").
Validation truncation and accuracy, the repetitive-token share and the EOS advantage are added to the
reasons when the run has them, because they are what a researcher checks next.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from opdwatch.changepoints import ChangepointSettings, Regime
from opdwatch.episodes import Episode, find_episodes
from opdwatch.metric_defs import (
    EOS_ADVANTAGE_MEAN,
    MEAN_LENGTH,
    REPETITIVE_SHARE,
    TRUNCATION_RATE,
    VAL_ACCURACY,
    VAL_TRUNCATION_RATE,
)
from opdwatch.onset import LENGTH, Onset, find_onset, truncation_regimes
from opdwatch.text import plural

HEALTHY, INFLATING, DEGRADED, COLLAPSED = "healthy", "inflating", "degraded", "collapsed"
RECOVERING, RECOVERED = f"{COLLAPSED}, recovering", f"{COLLAPSED}, recovered"
DEGRADED_RECOVERED = f"{DEGRADED}, recovered"
NO_TRUNCATION = "no truncation data"
LABELS = (HEALTHY, INFLATING, DEGRADED, DEGRADED_RECOVERED, COLLAPSED, RECOVERING, RECOVERED, NO_TRUNCATION)
UNKNOWN = "unknown"  # the kind of NO_TRUNCATION (a CSS class: one word)


@dataclass(frozen=True)
class VerdictSettings:
    """Levels of the verdict (defaults and why: docs/analysis.md)."""

    collapse_level: float = 0.5    # the benchmark's collapse definition (also the detector's replay)
    raised_level: float = 0.3      # a regime at this level marks inflation (the onset's min_level)
    min_rise: float = 0.15         # ... and this far above the quiet regime before it
    chronic_steps: int = 15        # a raised regime this long, not rising, is chronic (degraded)
    min_length_ratio: float = 1.3  # mean length inflation without truncation
    tail: int = 5                  # the "last steps" quoted in the reasons
    changepoints: ChangepointSettings = field(default_factory=ChangepointSettings)


@dataclass(frozen=True)
class Current:
    """Where the run is now: the last regime's level and the last recorded step's value."""

    level: float
    since: int          # first step of the current regime
    step: int           # last step
    value: float        # truncation rate at the last step
    tail_median: float  # median of the last ``tail`` steps

    def as_dict(self) -> dict[str, object]:
        return {"level": self.level, "since": self.since, "step": self.step, "value": self.value,
                "tail_median": self.tail_median}


@dataclass(frozen=True)
class Verdict:
    label: str                 # one of LABELS
    reasons: tuple[str, ...]
    onset: Onset
    episodes: tuple[Episode, ...] = ()
    current: Current | None = None
    regimes: tuple[Regime, ...] = ()  # every truncation-rate regime, in step order

    @property
    def kind(self) -> str:
        """healthy | inflating | degraded | collapsed: the worst that happened (CSS classes, colours)."""
        return UNKNOWN if self.label == NO_TRUNCATION else self.label.split(",")[0]

    def json_fields(self) -> dict[str, object]:
        """What ``opdwatch analyze --json`` adds beside the label and reasons."""
        return {"verdict_kind": self.kind, "episodes": [e.as_dict() for e in self.episodes],
                "current": None if self.current is None else self.current.as_dict(),
                "regimes": [r.as_dict() for r in self.regimes]}

    def as_dict(self) -> dict[str, object]:
        return {"label": self.label, "reasons": list(self.reasons), "onset": self.onset.as_dict(),
                **self.json_fields()}


def verdict(series: pl.DataFrame, onset: Onset | None = None, *,
            settings: VerdictSettings | None = None) -> Verdict:
    """Judge a :func:`opdwatch.series.step_series` frame (``onset`` is computed when not given)."""
    s = settings or VerdictSettings()
    onset = onset if onset is not None else find_onset(
        series, min_level=s.raised_level, min_rise=s.min_rise, min_length_ratio=s.min_length_ratio,
        changepoints=s.changepoints)
    trunc = truncation_regimes(series, s.changepoints) if not onset.regimes else None
    regimes = onset.regimes or (tuple(trunc.regimes) if trunc is not None else ())
    steps, values = _steps_values(series, TRUNCATION_RATE)
    if len(values) == 0 or not regimes:
        reasons = ["no truncation data: no train step has a known truncation rate (NaN or missing)"]
        if onset.step is not None:  # length inflation is still worth saying
            reasons.append(f"onset at step {onset.step}: {onset.evidence}")
        return Verdict(NO_TRUNCATION, tuple(reasons), onset)
    episodes = tuple(find_episodes(steps, values, regimes, collapse_level=s.collapse_level))
    last = regimes[-1]
    current = Current(level=last.level, since=last.start, step=int(steps[-1]), value=float(values[-1]),
                      tail_median=float(np.median(values[-s.tail:])))
    label, why = _label(regimes, episodes, onset, series, s)
    reasons = list(why)
    if onset.step is not None:
        reasons.append(f"onset at step {onset.step}: {onset.evidence}")
    elif label in (HEALTHY, DEGRADED):
        reasons.append(onset.evidence)
    reasons.extend(e.describe() + ("" if e.end is not None else ", ongoing") for e in episodes)
    reasons.append(f"now: truncation rate {current.level:.2f} (current regime, steps {current.since}-"
                   f"{current.step}); {current.value:.2f} at step {current.step}, {current.tail_median:.2f} median "
                   f"of the last {plural(min(s.tail, len(values)), 'step')}")
    reasons.extend(_context(series))
    return Verdict(label, tuple(reasons), onset, episodes, current, tuple(regimes))


# The detector's levels and the verdict's kinds, on one scale: what each says about the run.
_DETECTOR_KIND = {"warmup": "ok", "ok": "ok", "warning": "warning", "alarm": "alarm"}
_VERDICT_KIND = {HEALTHY: "ok", INFLATING: "warning", DEGRADED: "warning", COLLAPSED: "alarm"}


def detector_story(v: Verdict, level: str | None, *, first_warning: int | None = None,
                   first_alarm: int | None = None) -> tuple[str, bool]:
    """One line that tells the detector's state and the verdict as one story, and whether they differ
    in kind (the dashboard shows the line only then). The detector answers "is a transition under way
    now?" from the latest steps against an early baseline; the verdict reads the whole truncation
    history, so after a collapse they can honestly disagree (the detector steps down once the run is
    quiet for a while; a run that collapsed inside the detector's warm-up never alarms)."""
    if level is None:
        return f"verdict: {v.label}; the detector has no steps yet", False
    when = f" at step {first_alarm}" if level == "alarm" and first_alarm is not None else (
        f" at step {first_warning}" if level == "warning" and first_warning is not None else "")
    head = f"detector: {level}{when}; verdict: {v.label}"
    ep = v.episodes[0] if v.episodes else None
    if ep is not None:
        head += f" (collapse from step {ep.start}, peak {ep.peak:.2f} at step {ep.peak_step})"
    det, ver = _DETECTOR_KIND.get(level, "ok"), _VERDICT_KIND.get(v.kind, "ok")
    if v.label == NO_TRUNCATION:  # the detector's other signals still speak; the verdict cannot
        return head + ": the run has no truncation data, so the verdict cannot judge it", det != "ok"
    if det == ver:
        return head, False
    if level == "warmup" and ver != "ok":
        return head + ": the run changed inside the detector's warm-up, so it had no baseline to judge", True
    if det == "ok" and ver == "alarm":
        past = f"it alarmed at step {first_alarm} and " if first_alarm is not None else ""
        return head + f": {past}stepped down once the latest steps were quiet; the verdict keeps the history", True
    if det == "ok":
        return head + ": truncation moved slowly enough to enter the detector's baseline; the verdict compares " \
                      "regimes", True
    if ver == "ok":
        return head + ": the detector fired on its early signals (length, repetition, advantages) while the " \
                      "truncation rate has not changed regime", True
    if det == "warning":  # verdict says collapse: the detector's warning has not escalated
        return head + ": the detector is at warning, the truncation history already shows the collapse", True
    return head + ": the detector alarmed on its early signals before truncation reached the collapse level", True


def _label(regimes: tuple[Regime, ...], episodes: tuple[Episode, ...], onset: Onset, series: pl.DataFrame,
           s: VerdictSettings) -> tuple[str, list[str]]:
    last = regimes[-1]
    base = regimes[0].level if regimes[0].level < s.raised_level else 0.0
    quiet_now = last.level < s.raised_level and last.level - base < s.min_rise
    if episodes:
        n = len(episodes)
        many = f" ({n} episodes)" if n > 1 else ""
        if episodes[-1].end is None:
            return COLLAPSED, [f"collapsed{many}: truncation {last.level:.2f} >= {s.collapse_level} since step "
                               f"{episodes[-1].start}"]
        if quiet_now:
            return RECOVERED, [f"collapsed{many} and recovered: truncation back to {last.level:.2f} since step "
                               f"{last.start} (quiet level {base:.2f})"]
        return RECOVERING, [f"collapsed{many}, out of collapse since step {episodes[-1].end + 1} but truncation "
                            f"still {last.level:.2f} (quiet level {base:.2f})"]
    if last.level >= s.raised_level:
        first = len(regimes) - 1
        while first > 0 and regimes[first - 1].level >= s.raised_level:
            first -= 1
        since = regimes[first].start
        lasted = last.end - since + 1
        rising = last.level - regimes[first].level >= s.min_rise
        if lasted >= s.chronic_steps and not rising:
            return DEGRADED, [f"degraded: truncation {last.level:.2f} (>= {s.raised_level}, < {s.collapse_level}) for "
                              f"{lasted} steps since step {since}"]
        how = "still rising" if rising else f"for {plural(lasted, 'step')}"
        return INFLATING, [f"inflating: truncation {last.level:.2f} since step {since}, {how}"]
    if not quiet_now:
        return INFLATING, [f"inflating: truncation up from {base:.2f} to {last.level:.2f} (since step {last.start})"]
    if onset.step is not None and onset.series != LENGTH:
        return DEGRADED_RECOVERED, [f"truncation was raised from step {onset.step} and is back to {last.level:.2f} "
                                    f"since step {last.start}"]
    if onset.step is not None:  # length inflation without truncation: is the length still up?
        lengths = _steps_values(series, MEAN_LENGTH)[1]
        now = float(np.mean(lengths[-s.tail:])) if len(lengths) else 0.0
        if onset.before and now >= s.min_length_ratio * onset.before:
            return INFLATING, [f"inflating: mean length {onset.before:.1f} -> {now:.1f} over the last "
                               f"{plural(s.tail, 'step')}, truncation not raised yet"]
        return HEALTHY, [f"mean length rose from step {onset.step} and is back to {now:.1f}"]
    return HEALTHY, []


def _context(series: pl.DataFrame) -> list[str]:
    out = []
    for column, name in ((VAL_TRUNCATION_RATE, "validation truncation"),
                         (VAL_ACCURACY, "validation accuracy"),
                         (REPETITIVE_SHARE, "repetitive-token share"),
                         (EOS_ADVANTAGE_MEAN, "EOS advantage")):
        values = _steps_values(series, column)[1]
        if len(values):
            out.append(f"{name} {values[0]:.3g} at the start, {values[-1]:.3g} at the end")
    return out


def _steps_values(series: pl.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray]:
    if column not in series.columns:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    data = series.select("step", pl.col(column).cast(pl.Float64).fill_nan(None)).drop_nulls(column).sort("step")
    return data["step"].to_numpy(), data[column].to_numpy()
