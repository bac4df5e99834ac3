"""Replay a recorded run through the detector, step by step as if live, to see when it would have warned.

``replay(run, settings)`` reads the run's train-step metrics (the same dicts the trainer passes to the
detector) and returns a :class:`Replay`: one row per step with the level and each signal's statistic, the
transitions with their evidence, the first warning and alarm, what the policy would have done, and the
run's collapse step (first step with truncation rate >= 0.5), so lead time can be read off directly.

The steps are the run's step table (:mod:`opdwatch.step_table`: one row per step, in step order), and the
step facts (train steps, last step, missing steps, steps with an unknown truncation rate, the collapse
step) are the same :class:`~opdwatch.step_table.StepFacts` that ``info`` and ``analyze`` report. A step
whose truncation rate is unknown is replayed with its other signals and left out of the collapse step.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import polars as pl

from opdwatch.detector.detector import Detector, DetectorState
from opdwatch.detector.policy import Decision, InterventionPolicy
from opdwatch.detector.settings import DetectorSettings, PolicySettings
from opdwatch.errors import OpdwatchError
from opdwatch.metric_defs import LENGTH_CV, TRUNCATION_RATE
from opdwatch.reader import Run
from opdwatch.series import rollout_aggregates
from opdwatch.step_table import COLLAPSE_TRUNCATION, StepFacts, first_collapse
from opdwatch.text import plural


@dataclass
class Replay:
    warmup_steps: int
    frame: pl.DataFrame                       # step, level, reason, cusum/<signal>..., z/<signal>...
    transitions: list[DetectorState] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    first_warning: int | None = None          # first step at warning or alarm
    episodes: list[int] = field(default_factory=list)  # steps where the detector left ok (warning or alarm)
    first_alarm: int | None = None
    collapse_step: int | None = None          # first step with truncation >= COLLAPSE_TRUNCATION
    first_step: int | None = None
    facts: StepFacts = field(default_factory=lambda: StepFacts.of([], []))  # of the replayed steps

    @property
    def warning_before_collapse(self) -> int | None:
        """Start of the last warning episode that began at or before the collapse step (earlier episodes
        that ended were false alarms as far as this collapse is concerned)."""
        if self.collapse_step is None:
            return None
        starts = [s for s in self.episodes if s <= self.collapse_step]
        return starts[-1] if starts else None

    @property
    def steps(self) -> int:
        """Train steps replayed."""
        return self.frame.height

    @property
    def too_short(self) -> bool:
        """The run ended inside the detector's warm-up: it never had a baseline, so it has no verdict."""
        return self.steps <= self.warmup_steps

    @property
    def collapsed_in_warmup(self) -> bool:
        """The collapse step is one of the first ``warmup_steps`` replayed steps: nothing to warn against."""
        if self.collapse_step is None or self.frame.height == 0:
            return False
        return int((self.frame["step"] < self.collapse_step).sum()) < self.warmup_steps

    @property
    def note(self) -> str | None:
        """Why the replay cannot judge the run, or None when it can (also in the JSON summary)."""
        if self.facts.no_truncation_data:
            return ("no truncation data: the truncation rate is unknown at every replayed step, so the run has "
                    "no collapse step to warn before")
        if self.collapsed_in_warmup:
            return "the run collapsed inside the detector's warm-up: no baseline to warn against"
        if self.too_short:
            return (f"too short for a verdict: {plural(self.steps, 'train step')}, all inside the detector's "
                    f"warm-up ({plural(self.warmup_steps, 'step')})")
        return None

    @property
    def lead_time(self) -> int | None:
        """Steps from :attr:`warning_before_collapse` to the collapse (None if either is missing)."""
        start = self.warning_before_collapse
        return None if start is None else self.collapse_step - start

    def summary(self) -> dict[str, object]:
        return {"warmup_steps": self.warmup_steps, **self.facts.as_dict(), "too_short": self.too_short,
                "collapsed_in_warmup": self.collapsed_in_warmup, "note": self.note,
                "first_warning": self.first_warning, "first_alarm": self.first_alarm,
                "collapse_step": self.collapse_step, "warning_before_collapse": self.warning_before_collapse,
                "lead_time": self.lead_time, "episodes": self.episodes,
                "transitions": [{"step": t.step, "level": t.level, "previous": t.previous, "reason": t.reason,
                                 "evidence": [e.as_dict() for e in t.evidence]} for t in self.transitions],
                "decisions": [d.as_dict() for d in self.decisions]}


def collapse_step(rows: Iterable[tuple[int, Mapping[str, float]]],
                  threshold: float = COLLAPSE_TRUNCATION) -> int | None:
    """First step whose known truncation rate reaches ``threshold`` (the benchmark's collapse step), or None."""
    return first_collapse([(step, m[TRUNCATION_RATE]) for step, m in rows if TRUNCATION_RATE in m], threshold)


def replay_rows(rows: Iterable[tuple[int, Mapping[str, float]]], settings: DetectorSettings | None = None,
                policy: PolicySettings | None = None) -> Replay:
    """Replay (step, metrics) pairs in step order."""
    settings = settings or DetectorSettings()
    det = Detector(settings)
    pol = InterventionPolicy(policy or PolicySettings())
    beta = alpha = 0.0  # the knobs as act mode would have moved them (from the policy's base values)
    rows = list(rows)
    out = Replay(warmup_steps=settings.warmup_steps, frame=pl.DataFrame())
    records = []
    for step, metrics in rows:
        state = det.update(step, metrics)
        if out.first_step is None:
            out.first_step = step
        if state.changed:
            out.transitions.append(state)
            if state.previous in ("ok", "warmup"):
                out.episodes.append(step)
        if state.level in ("warning", "alarm") and out.first_warning is None:
            out.first_warning = step
        if state.level == "alarm" and out.first_alarm is None:
            out.first_alarm = step
        decisions = pol.decide(state, step, beta=beta, alpha=alpha)
        for d in decisions:
            beta, alpha = d.applied_to(beta, alpha)
        out.decisions.extend(decisions)
        rec: dict[str, object] = {"step": step, "level": state.level, "reason": state.reason}
        rec.update({f"cusum/{e.signal}": e.statistic for e in state.signals})
        rec.update({f"z/{e.signal}": e.z for e in state.signals})
        records.append(rec)
    out.frame = pl.DataFrame(records, infer_schema_length=None) if records else pl.DataFrame()
    out.facts = StepFacts.of([step for step, _ in rows], [m.get(TRUNCATION_RATE) for _, m in rows])
    out.collapse_step = out.facts.collapse_step  # == collapse_step(rows): one definition
    return out


def steps_to_rows(steps: pl.DataFrame) -> list[tuple[int, dict[str, float]]]:
    """Train-step metrics frame (run.steps("train")) -> (step, metrics dict) pairs, nulls dropped."""
    metric_cols = [c for c in steps.columns if c not in ("step", "phase", "rank", "time")]
    rows = []
    for rec in steps.sort("step").iter_rows(named=True):
        rows.append((int(rec["step"]), {k: float(rec[k]) for k in metric_cols if rec[k] is not None}))
    return rows


# Step metrics newer than some recorded runs, recomputed from their rollouts table when missing (the
# definitions in opdwatch.series equal the recorder's), so old runs replay with every signal.
BACKFILL_FROM_ROLLOUTS = (LENGTH_CV,)


def train_rows(run: Run) -> list[tuple[int, dict[str, float]]]:
    """The run's train-step metrics as the detector sees them, with :data:`BACKFILL_FROM_ROLLOUTS` filled in
    from the rollouts table where the recorder that wrote the run did not record them."""
    steps = run.steps("train").collect()
    missing = [c for c in BACKFILL_FROM_ROLLOUTS if c not in steps.columns]
    if missing and steps.height:
        extra = rollout_aggregates(run, phase="train").select("step", *missing)
        steps = steps.join(extra.with_columns(pl.col("step").cast(steps.schema["step"])), on="step", how="left")
    return steps_to_rows(steps)


def replay(run: Run, settings: DetectorSettings | None = None, policy: PolicySettings | None = None) -> Replay:
    """Replay a recorded run's train steps through a fresh detector (and the policy, for what it would do)."""
    rows = train_rows(run)
    if not rows:
        raise OpdwatchError(f"{run.path}: the run has no train steps to replay")
    return replay_rows(rows, settings, policy)
