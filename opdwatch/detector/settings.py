"""Settings of the early-warning detector, the intervention policy, the alert sinks and the trainer hook
(the alert channels' own sections are opdwatch.alerts.settings).

All frozen dataclasses with defaults, one comment per field; docs/detector.md explains how they were chosen
and how to tune them (``opdwatch detect RUN_DIR --set key=value`` replays a recorded run with other values).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from opdwatch.alerts.settings import AlertsConfig
from opdwatch.config_tree import with_overrides
from opdwatch.detector.signals import DEFAULT_SIGNALS, SIGNALS
from opdwatch.errors import OpdwatchError

# with_overrides(settings, {"h": 6}): the one override path of every config (opdwatch.config_tree), kept
# importable from here for `opdwatch detect` and older callers.
__all__ = ["MODES", "DetectorSettings", "PolicySettings", "WandbSettings", "WatchConfig", "with_overrides"]

MODES = ("off", "warn", "act")


@dataclass(frozen=True)
class DetectorSettings:
    # Signals and baselines
    # (Name lists are comma-separated strings so that YAML configs and `--set` overrides stay flat.)
    signals: str = ",".join(DEFAULT_SIGNALS)  # watched signals (names in opdwatch.detector.signals.SIGNALS)
    warmup_steps: int = 4  # train steps that form each signal's baseline; nothing statistical fires before
    baseline_halflife: float = 30.0  # afterwards the baseline follows healthy steps (EWMA, steps); 0 = frozen
    adapt_clip: float = 2.0  # when the baseline adapts, a step's deviation counts at most this many scales
    floor_factor: float = 1.0  # multiplies every signal's minimum scale (larger = less sensitive)
    z_clip: float = 4.0  # |z| is clipped here, so one wild step alone can never make a signal fire
    # Sequential change detection (two-sided CUSUM on z per signal)
    k: float = 1.0  # CUSUM allowance in baseline scales (half the smallest shift worth flagging: 2 scales)
    h: float = 5.0  # CUSUM decision threshold: a signal "fires" when its statistic exceeds h
    cap_factor: float = 2.5  # statistics are capped at cap_factor * h so they fall back in bounded time
    # Combining signals into states
    warn_min_signals: int = 2  # warning: at least this many signals fire, from ...
    warn_min_families: int = 1  # ... at least this many families (rollouts / advantage / teacher) ...
    warn_single_factor: float = 1.5  # ... or one of `strong_signals` exceeds warn_single_factor * h
    strong_signals: str = "truncation,loop,repetition,rep_share"  # (signals that are a collapse's own)
    alarm_min_signals: int = 3  # alarm: this many fire, one of them an outcome signal (truncation/loop/rep.)
    alarm_truncation: float = 0.3  # alarm when the truncation rate reaches this ...
    warn_truncation: float = 0.15  # ... warning when it reaches this (both also inside the warm-up) ...
    guard_steps: int = 2  # ... for this many consecutive steps (one-step spikes that recover are common)
    # one step at or above this warns at once (0 = off): one-step spikes of healthy runs stayed below 0.3 in the
    # simulations and real runs, while a real tiny run went 0.03 -> 0.91 in one step, which the guards and the
    # CUSUMs (two steps of evidence) only flagged a step later
    warn_truncation_jump: float = 0.4
    recover_steps: int = 5  # consecutive steps below a state's condition before stepping down from it

    @property
    def signal_names(self) -> tuple[str, ...]:
        return _names(self.signals)

    @property
    def strong_signal_names(self) -> tuple[str, ...]:
        return _names(self.strong_signals)

    def validate(self) -> None:
        # Messages start with the field names: validate_tree puts the section's path in front (watch.detector.h).
        unknown = [s for s in self.signal_names if s not in SIGNALS]
        if unknown or not self.signal_names:
            raise OpdwatchError(f"signals must be a non-empty subset of {sorted(SIGNALS)}, got {unknown}")
        if self.warmup_steps < 2:
            raise OpdwatchError(f"warmup_steps must be >= 2, got {self.warmup_steps}")
        if self.baseline_halflife < 0 or self.floor_factor <= 0 or self.z_clip <= 0 or self.adapt_clip <= 0:
            raise OpdwatchError("baseline_halflife must be >= 0, floor_factor, z_clip, adapt_clip > 0")
        if any(s not in SIGNALS for s in self.strong_signal_names):
            raise OpdwatchError(f"strong_signals must be signal names, got {self.strong_signals}")
        if self.k < 0 or self.h <= 0 or self.cap_factor < 1:
            raise OpdwatchError(f"k={self.k}, h={self.h}, cap_factor={self.cap_factor}: need k >= 0, h > 0, "
                                "cap_factor >= 1")
        if self.warn_min_signals < 1 or self.alarm_min_signals < 1 or self.recover_steps < 1 \
                or self.guard_steps < 1 or self.warn_min_families < 1:
            raise OpdwatchError("warn_min_signals, warn_min_families, alarm_min_signals, recover_steps, guard_steps "
                                "must be >= 1")
        if not 0 < self.warn_truncation <= self.alarm_truncation <= 1:
            raise OpdwatchError("warn_truncation, alarm_truncation: need 0 < warn_truncation <= alarm_truncation <= 1")
        if not 0 <= self.warn_truncation_jump <= 1:
            raise OpdwatchError("warn_truncation_jump must be in [0, 1] (0 = off)")


def _names(csv: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in csv.split(",") if name.strip())


@dataclass(frozen=True)
class PolicySettings:
    # What to raise
    raise_beta: bool = True  # raise beta (KL to the reference) on warning/alarm
    raise_alpha: bool = True  # raise alpha (golden SFT weight) on warning/alarm
    # How much (multiplicative; a knob at 0 first jumps to its floor)
    beta_floor: float = 0.1  # beta set at the first raise when it was below this (Stable-OPD's value)
    beta_factor: float = 2.0  # later raises multiply beta by this
    beta_max: float = 1.0  # beta is never raised above this
    alpha_floor: float = 0.5  # alpha set at the first raise when it was below this (Stable-OPD's value)
    alpha_factor: float = 2.0  # later raises multiply alpha by this
    alpha_max: float = 2.0  # alpha is never raised above this
    alarm_raises: int = 2  # an alarm applies this many raise steps at once (a warning applies one)
    # When
    cooldown_steps: int = 5  # after a raise, no further raise for this many steps (the change needs time)
    escalate_bypasses_cooldown: bool = True  # warning -> alarm may raise again inside the cooldown
    restore_on_alarm: bool = False  # on alarm also ask the trainer to restore its last healthy checkpoint ...
    restore_on_warning: bool = False  # ... already on the first warning of an episode (earlier, more drastic)
    restore_margin_steps: int = 5  # ... one saved at least this many steps before the detector left "ok"
    # Relaxing
    relax_after_steps: int = 30  # consecutive ok steps after which the knobs step back towards their start
    relax_factor: float = 0.5  # each relax multiplies the raised knobs by this (not below their start)

    def validate(self) -> None:
        if self.beta_floor < 0 or self.alpha_floor < 0 or self.beta_max < self.beta_floor \
                or self.alpha_max < self.alpha_floor:
            raise OpdwatchError("beta_floor, beta_max, alpha_floor, alpha_max: need 0 <= beta_floor <= beta_max and "
                                "0 <= alpha_floor <= alpha_max")
        if self.beta_factor < 1 or self.alpha_factor < 1 or not 0 < self.relax_factor < 1:
            raise OpdwatchError("beta_factor, alpha_factor, relax_factor: need beta_factor, alpha_factor >= 1 and "
                                "0 < relax_factor < 1")
        if self.cooldown_steps < 0 or self.relax_after_steps < 1 or self.alarm_raises < 1:
            raise OpdwatchError("cooldown_steps, relax_after_steps, alarm_raises: need cooldown_steps >= 0, "
                                "relax_after_steps >= 1, alarm_raises >= 1")


@dataclass(frozen=True)
class WandbSettings:
    # Weights & Biases (optional extra `opdwatch[wandb]`; imported only when enabled).
    # The run itself: for a Watcher that starts its own wandb run (a loop other than the trainer). The trainer
    # starts the run from its `log.wandb` section and reads these four as an older alias of it.
    enabled: bool = False  # log step metrics and detector scores, and send run.alert on warning/alarm
    project: str = "opdwatch"  # project of a run this hook starts (an active wandb.run is reused instead)
    entity: str = ""  # wandb entity; "" = the default one
    mode: str = ""  # "online", "offline" or "disabled"; "" = WANDB_MODE or wandb's default
    # What the detector sends to the run (its own or the one it is handed)
    log_metrics: bool = True  # log the detector statistics (and, into a run of its own, the step metrics)
    alert_wait_seconds: float = 300.0  # wandb's wait_duration: same-title alerts closer than this are dropped
    alert_min_steps: int = 10  # our own rate limit: at most one alert per level per this many steps


@dataclass(frozen=True)
class WatchConfig:
    # Early-warning watch of a training run (trainer/loop/watch.py)
    mode: str = "off"  # "off": nothing; "warn": detect, record and alert only; "act": also intervene
    detector: DetectorSettings = field(default_factory=DetectorSettings)  # the detector
    policy: PolicySettings = field(default_factory=PolicySettings)  # interventions in "act" mode
    wandb: WandbSettings = field(default_factory=WandbSettings)  # optional wandb logging and alerts
    alerts: AlertsConfig = field(default_factory=AlertsConfig)  # console, webhook, Slack, e-mail (opdwatch.alerts)
    # An exception in the detector, the policy or an alert is recorded as an error event and training goes on;
    # strict re-raises it instead (tests, CI)
    strict: bool = False

    def validate(self) -> None:
        """This section's own field; config_tree.validate_tree(config, "watch") checks the whole watch."""
        if self.mode not in MODES:
            raise OpdwatchError(f"mode must be one of {MODES}, got {self.mode!r}")
