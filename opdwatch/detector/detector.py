"""The online early-warning detector: one step's metrics in, a state (ok / warning / alarm) out.

    det = Detector(DetectorSettings())
    for step, metrics in stream:
        state = det.update(step, metrics)
        if state.changed and state.level in ("warning", "alarm"):
            print(state.message)

Every step, each watched signal (opdwatch.detector.signals) is standardised against its early baseline and
fed to a two-sided CUSUM (opdwatch.detector.cusum). A signal *fires* when its statistic in the bad direction
exceeds ``h``. The states combine signals, because a collapse moves several at once while noise rarely
does: **warning** when ``warn_min_signals`` fire (or one fires very strongly), **alarm** when
``alarm_min_signals`` fire and one of them is an outcome (truncation, looping, repetition) — or, without any
statistics, when the truncation rate itself passes ``alarm_truncation``. A state is entered at once and left
only after ``recover_steps`` quiet steps, so it does not flicker. Each state carries the evidence behind it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from opdwatch.detector.cusum import Cusum, cusum_update
from opdwatch.detector.persist import check_settings, decode_float, encode_float, reading
from opdwatch.detector.settings import DetectorSettings
from opdwatch.detector.signals import SIGNALS, Baseline, signal_values
from opdwatch.metric_defs import TRUNCATION_RATE
from opdwatch.text import plural

LEVELS = ("warmup", "ok", "warning", "alarm")
_RANK = {"warmup": 0, "ok": 0, "warning": 1, "alarm": 2}


@dataclass(frozen=True)
class Evidence:
    signal: str       # signal name (opdwatch.detector.signals.SIGNALS)
    value: float      # raw value at this step
    baseline: float   # baseline centre
    scale: float      # baseline scale (>= the signal's floor)
    z: float          # standardised value, before clipping (NaN if not available)
    statistic: float  # CUSUM statistic in the signal's bad direction
    direction: str    # "up" or "down": the direction of the change
    fired: bool       # statistic > h

    def as_dict(self) -> dict[str, float | str | bool]:
        return {k: (round(v, 4) if isinstance(v, float) and math.isfinite(v) else v)
                for k, v in self.__dict__.items()}

    def describe(self) -> str:
        arrow = "up" if self.direction == "up" else "down"
        return (f"{self.signal} {arrow} ({self.value:.3g} vs baseline {self.baseline:.3g}, z={self.z:+.1f}, "
                f"cusum={self.statistic:.1f})")


@dataclass(frozen=True)
class DetectorState:
    step: int
    level: str                         # warmup | ok | warning | alarm
    previous: str                      # level before this step
    evidence: tuple[Evidence, ...]     # fired signals, strongest first (all signals: see `signals`)
    signals: tuple[Evidence, ...] = field(default=(), repr=False)  # every watched signal this step
    reason: str = ""                   # which rule put the detector in this level

    @property
    def changed(self) -> bool:
        return _RANK[self.level] != _RANK[self.previous]

    @property
    def escalated(self) -> bool:
        return _RANK[self.level] > _RANK[self.previous]

    @property
    def message(self) -> str:
        head = f"step {self.step}: {self.level}"
        if self.reason:
            head += f" ({self.reason})"
        if self.evidence:
            head += ": " + "; ".join(e.describe() for e in self.evidence[:4])
        return head

    def scores(self) -> dict[str, float]:
        """Flat ``detector/...`` metrics of this step (statistics and z-scores), e.g. for wandb."""
        out = {"detector/level": float(_RANK[self.level])}
        for e in self.signals:
            out[f"detector/cusum/{e.signal}"] = e.statistic
            out[f"detector/z/{e.signal}"] = e.z
        return out


class Detector:
    """Feed one train step at a time with :meth:`update`; steps must increase."""

    def __init__(self, settings: DetectorSettings | None = None) -> None:
        self.settings = settings or DetectorSettings()
        self.settings.validate()
        self.reset()

    def reset(self) -> None:
        s = self.settings
        self._baselines = self._new_baselines()
        self._trunc_run = 0  # consecutive steps with truncation >= warn_truncation
        self._trunc_alarm_run = 0  # ... >= alarm_truncation
        self._cusum = {name: Cusum() for name in s.signal_names}
        self._level = "warmup"
        self._quiet = 0
        self._last_step: int | None = None
        self.steps_seen = 0

    @property
    def level(self) -> str:
        return self._level

    def state_dict(self) -> dict[str, Any]:
        """Everything :meth:`update` carries from one step to the next, as plain JSON-able Python
        (opdwatch/detector/persist.py), with the settings it belongs to."""
        return {
            "settings": dataclasses.asdict(self.settings),
            "baselines": {name: b.state_dict() for name, b in self._baselines.items()},
            "cusum": {name: {k: encode_float(v) for k, v in dataclasses.asdict(c).items()}
                      for name, c in self._cusum.items()},
            "level": self._level,
            "quiet": self._quiet,
            "trunc_run": self._trunc_run,
            "trunc_alarm_run": self._trunc_alarm_run,
            "last_step": self._last_step,
            "steps_seen": self.steps_seen,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict` of a detector with equal settings (else a one-line OpdwatchError);
        later updates then give exactly what the saved detector would have given."""
        check_settings("detector", state.get("settings") if isinstance(state, Mapping) else None,
                       dataclasses.asdict(self.settings))
        with reading("detector"):  # parse everything before changing anything
            baselines, cusum = self._new_baselines(), {}
            for name, base in baselines.items():
                base.load_state_dict(state["baselines"][name])
                c = state["cusum"][name]
                cusum[name] = Cusum(up=decode_float(c["up"]), down=decode_float(c["down"]))
            level = str(state["level"])
            if level not in LEVELS:
                raise ValueError(f"unknown level {level!r}")
            last_step = None if state["last_step"] is None else int(state["last_step"])
            counters = [int(state[k]) for k in ("quiet", "trunc_run", "trunc_alarm_run", "steps_seen")]
        self._baselines, self._cusum, self._level, self._last_step = baselines, cusum, level, last_step
        self._quiet, self._trunc_run, self._trunc_alarm_run, self.steps_seen = counters

    def update(self, step: int, metrics: Mapping[str, float]) -> DetectorState:
        s = self.settings
        if self._last_step is not None and step <= self._last_step:
            raise ValueError(f"steps must increase: got {step} after {self._last_step}")
        self._last_step = step
        self.steps_seen += 1
        values = signal_values(metrics, s.signal_names)
        cap = s.cap_factor * s.h
        evidence = []
        for name, x in values.items():
            base = self._baselines[name]
            z = base.z(x)
            if math.isfinite(z):  # clipped for the CUSUM only; the evidence keeps the raw z
                self._cusum[name] = cusum_update(self._cusum[name], max(-s.z_clip, min(s.z_clip, z)), k=s.k,
                                                 cap=cap)
            evidence.append(self._evidence(name, x, z))
        ready = self.steps_seen > s.warmup_steps  # a signal without a baseline yet has z = NaN, never fires

        target, reason = self._target(evidence, _get_truncation(metrics), ready)
        if target == "ok" and not ready:
            target = "warmup"
        previous = self._level
        if _RANK[target] >= _RANK[previous]:
            new, self._quiet = target, 0
        else:  # step down only after recover_steps quiet steps in a row
            self._quiet += 1
            new = target if self._quiet >= s.recover_steps else previous
            if new == target:
                self._quiet = 0
            else:
                reason = f"held: {self._quiet}/{s.recover_steps} quiet steps before stepping down"
        self._level = new
        # Baselines learn only while the run is healthy (with clipped deviations), so a developing
        # collapse does not drag the reference towards itself.
        healthy = new in ("warmup", "ok")
        for e in evidence:
            self._baselines[e.signal].observe(e.value, adapt=healthy)
        fired = tuple(sorted((e for e in evidence if e.fired), key=lambda e: -e.statistic))
        return DetectorState(step=step, level=new, previous=previous, evidence=fired, signals=tuple(evidence),
                             reason=reason if _RANK[new] > 0 else "")

    # ------------------------------------------------------------------------------------ helpers
    def _new_baselines(self) -> dict[str, Baseline]:
        s = self.settings
        return {name: Baseline(floor=SIGNALS[name].floor * s.floor_factor, warmup=s.warmup_steps,
                               halflife=s.baseline_halflife, clip=s.adapt_clip)
                for name in s.signal_names}

    def _evidence(self, name: str, x: float, z: float) -> Evidence:
        spec, base, c = SIGNALS[name], self._baselines[name], self._cusum[name]
        if spec.direction == "up":
            stat, direction = c.up, "up"
        elif spec.direction == "down":
            stat, direction = c.down, "down"
        else:
            stat, direction = (c.up, "up") if c.up >= c.down else (c.down, "down")
        return Evidence(signal=name, value=x, baseline=base.mean, scale=base.scale, z=z, statistic=stat,
                        direction=direction, fired=stat > self.settings.h)

    def _target(self, evidence: list[Evidence], truncation: float, ready: bool) -> tuple[str, str]:
        s = self.settings
        finite = math.isfinite(truncation)
        # A step whose truncation is unknown (NaN: no rollouts recorded) neither extends nor breaks a run of high
        # steps: counting it as "not raised" would treat it as 0 and restart the guard (opdwatch/step_table.py
        # leaves such steps out of the collapse step and the verdict the same way).
        if finite:
            self._trunc_run = self._trunc_run + 1 if truncation >= s.warn_truncation else 0
            self._trunc_alarm_run = self._trunc_alarm_run + 1 if truncation >= s.alarm_truncation else 0
        if finite and self._trunc_alarm_run >= s.guard_steps:
            return "alarm", (f"truncation rate {truncation:.2f} >= {s.alarm_truncation:g} for "
                             f"{plural(s.guard_steps, 'step')}")
        fired = [e for e in evidence if e.fired] if ready else []
        outcome = [e for e in fired if SIGNALS[e.signal].outcome]
        if len(fired) >= s.alarm_min_signals and outcome:
            return "alarm", f"{plural(len(fired), 'signal')} changed, including {outcome[0].signal}"
        if finite and self._trunc_run >= s.guard_steps:
            return "warning", (f"truncation rate {truncation:.2f} >= {s.warn_truncation:g} for "
                               f"{plural(s.guard_steps, 'step')}")
        if s.warn_truncation_jump and finite and truncation >= s.warn_truncation_jump:
            return "warning", f"truncation rate jumped to {truncation:.2f} (>= {s.warn_truncation_jump:g})"
        families = {SIGNALS[e.signal].family for e in fired}
        if len(fired) >= s.warn_min_signals and len(families) >= s.warn_min_families:
            return "warning", f"{plural(len(fired), 'signal')} changed ({', '.join(sorted(families))})"
        strong = [e for e in fired if e.statistic > s.warn_single_factor * s.h and e.signal in s.strong_signal_names]
        if strong:
            return "warning", f"{strong[0].signal} changed strongly"
        return "ok", ""


def _get_truncation(metrics: Mapping[str, float]) -> float:
    value = metrics.get(TRUNCATION_RATE)
    return math.nan if value is None else float(value)
