"""From a detector state to an :class:`~opdwatch.alerts.message.AlertMessage`: the evidence decides the advice.

    msg = build_alert(state, AlertContext(name="exp1", run_dir=rec.run_dir, config={"opd": {"lr": 3e-3}}),
                      mode="warn", decisions=decisions, acted=[], beta=0.0, alpha=0.0, policy=PolicySettings(),
                      last_ok_step=9)

* which signal fired decides the playbook section quoted (docs/playbook.md, by signal family);
* the knobs' next values come from the policy's own ladder (opdwatch.detector.policy.raise_targets), the
  learning rate and TRL's on-policy fraction ``lmbda`` from the run's config when it has them, the rollback
  target from the last healthy step and the checkpoints saved;
* what act mode already did is what the watcher applied this step;
* the worst rollouts of the step are listed in the order of the dashboard's drill-down for that signal
  (opdwatch.live.run.order_rollouts), read from the run directory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from opdwatch.alerts.message import AlertMessage
from opdwatch.alerts.playbook import playbook

if TYPE_CHECKING:  # opdwatch.detector imports this module (its watcher): its names are imported on use
    from opdwatch.detector.detector import DetectorState
    from opdwatch.detector.policy import Decision
    from opdwatch.detector.settings import PolicySettings

LEVEL_OF_STATE = {"warning": "WARN", "alarm": "ERROR"}
# The dashboard drill-down order (opdwatch.live.run.ROLLOUT_ORDERS) that puts a signal's worst rollouts first
ORDER_OF_SIGNAL = {"truncation": "length", "length": "length", "length_cv": "length", "repetition": "repetition",
                   "loop": "repetition", "rep_share": "repetition", "adv_gap": "advantage", "eos_adv": "advantage",
                   "teacher_logp": "advantage"}
_GUARD_FAMILY = "rollouts"  # a truncation guard with no fired signal is the rollouts' own evidence
_ROLLOUT_KEYS = ("step", "rank", "rollout", "num_tokens", "finish_reason", "repetitive_token_share",
                 "advantage_mean", "zlib_tail_ratio", "loop_onset", "text")


@dataclass(frozen=True)
class AlertContext:
    name: str = ""                                         # run name in titles and dashboard links
    run_dir: Path | None = None                            # where the worst rollouts are read from
    config: Mapping[str, Any] = field(default_factory=dict)  # the run's config (lr, lmbda are looked up in it)
    dashboard_url: str = ""                                # base URL of `opdwatch dashboard`, "" = none
    worst_n: int = 3                                       # rollouts to name
    checkpoints: Callable[[], Sequence[int]] | None = None  # steps of the checkpoints saved so far
    restore_margin_steps: int = 5                          # a rollback aims this far before the last ok step


def build_alert(state: DetectorState, ctx: AlertContext, *, mode: str, decisions: Sequence[Decision],
                acted: Sequence[str], beta: float, alpha: float, policy: PolicySettings,
                last_ok_step: int | None) -> AlertMessage:
    """The alert for an escalation into warning or alarm. ``decisions``: the policy's for this step (applied
    in act mode, only proposed otherwise); ``acted``: what applying them did; ``beta``/``alpha``: the knobs
    before this step's decisions."""
    from opdwatch.detector.signals import SIGNALS

    # The signal the advice is about: an outcome (truncation, loops, repetition) when one fired, since then the
    # collapse is under way whatever moved first; else the strongest.
    lead = next((e for e in state.evidence if SIGNALS[e.signal].outcome), state.evidence[0] if state.evidence else None)
    signal = lead.signal if lead is not None else ""
    family = SIGNALS[signal].family if signal else _GUARD_FAMILY
    play = playbook()[family]
    where = f" in {ctx.name}" if ctx.name else ""
    title = f"OPD collapse {state.level}{where}"[:63]
    done = mode == "act" and bool(acted)
    if done:  # the next rung from where act mode left the knobs
        for d in decisions:
            beta, alpha = d.applied_to(beta, alpha)
    restored = done and any(d.action == "restore" for d in decisions)
    actions = _actions(state, ctx, beta=beta, alpha=alpha, policy=policy, last_ok_step=last_ok_step,
                       after_act=done, restored=restored)
    worst = worst_rollouts(ctx.run_dir, state.step, signal, ctx.worst_n) if ctx.run_dir is not None else ()
    return AlertMessage(
        run=ctx.name, step=state.step, level=LEVEL_OF_STATE[state.level], state=state.level, title=title,
        summary=state.message, signal=signal, family=family, recommendation=play.do, actions=actions,
        acted=_acted(mode, decisions, acted, policy), dashboard=_dashboard(ctx, state.step, signal, play.look_at),
        worst_rollouts=worst, evidence=tuple(e.as_dict() for e in state.evidence))


def _actions(state: DetectorState, ctx: AlertContext, *, beta: float, alpha: float, policy: PolicySettings,
             last_ok_step: int | None, after_act: bool, restored: bool) -> tuple[str, ...]:
    from opdwatch.detector.knobs import lmbda_of_alpha
    from opdwatch.detector.policy import describe_change, raise_targets

    out = []
    new_beta, new_alpha = raise_targets(policy, state.level, beta, alpha)
    if (new_beta, new_alpha) != (beta, alpha):
        when = f"if it persists after the {policy.cooldown_steps}-step cooldown, " if after_act else ""
        out.append(f"{when}raise {describe_change(beta, alpha, new_beta, new_alpha)} (the watch.policy ladder for "
                   f"{'an alarm' if state.level == 'alarm' else 'a warning'})")
    else:
        out.append(f"beta {beta:g} and alpha {alpha:g} are at their caps ({policy.beta_max:g}, {policy.alpha_max:g}):"
                   " lower the learning rate or roll back instead")
    lr_key, lr = _find(ctx.config, ("lr", "learning_rate"), first=("opd",))  # opd.lr, not the SFT warm-up's
    out.append(f"halve the learning rate: {lr_key} {lr:g} -> {lr / 2:g}" if lr_key else
               "halve the learning rate (not found in the run's config)")
    lmbda_key, _ = _find(ctx.config, ("lmbda",))
    if lmbda_key:  # the knobs' alpha is TRL's lmbda (detector.knobs): the current value, not the config's copy
        now, target = lmbda_of_alpha(alpha), lmbda_of_alpha(new_alpha)
        out.append(f"TRL GKD/GOLD: lower the on-policy fraction {lmbda_key} {now:.3g} -> {target:.3g} (the golden "
                   f"share that alpha {new_alpha:g} gives)" if target < now else
                   f"TRL GKD/GOLD: the on-policy fraction {lmbda_key} is at {now:.3g}; lower the learning rate")
    if state.level == "alarm" and not restored:
        out.append(_rollback(ctx, last_ok_step))
    return tuple(out)


def _rollback(ctx: AlertContext, last_ok_step: int | None) -> str:
    if last_ok_step is None:
        return "roll back to a checkpoint from before the trouble (the detector never saw a healthy step)"
    target = last_ok_step - ctx.restore_margin_steps
    why = f"the last healthy step {last_ok_step} minus restore_margin_steps {ctx.restore_margin_steps}"
    if ctx.checkpoints is None:
        return f"roll back to the newest checkpoint at or before step {target} ({why})"
    saved = [s for s in ctx.checkpoints() if s <= target]
    if not saved:
        return f"roll back: no checkpoint saved at or before step {target} ({why}); save checkpoints more often"
    return f"roll back to the checkpoint of step {max(saved)} (the newest at or before step {target}: {why})"


def _acted(mode: str, decisions: Sequence[Decision], acted: Sequence[str], policy: PolicySettings) -> str:
    if mode == "act":
        if acted:
            return "; ".join(acted)
        return (f"nothing new this step (cooldown of {policy.cooldown_steps} steps after the last raise, or the knobs"
                " at their caps)")
    proposed = "; ".join(d.reason for d in decisions) or "nothing this step (cooldown or caps)"
    return f"nothing: watch.mode is {mode!r} (act would have done: {proposed})"


def _dashboard(ctx: AlertContext, step: int, signal: str, look_at: str) -> str:
    order = ORDER_OF_SIGNAL.get(signal, "length")
    where = f"step {step} of run {ctx.name or '(this run)'}"
    if ctx.dashboard_url:
        query = urlencode({"run": ctx.name, "step": step, "phase": "train", "order": order})
        where += f" ({ctx.dashboard_url.rstrip('/')}/tokens?{query})"
    else:
        where += f" (opdwatch dashboard RUNS_ROOT, token drill-down ordered by {order})"
    return f"{where}: {look_at}"


def worst_rollouts(run_dir: Path, step: int, signal: str, n: int) -> tuple[dict[str, Any], ...]:
    """The ``n`` worst train rollouts of ``step`` by ``signal`` (the drill-down order for it), as dicts."""
    if n <= 0:
        return ()
    from opdwatch.live.run import order_rollouts  # the dashboard's order (lazy: only when an alert is built)
    from opdwatch.reader import open_run, scan_parts

    parts = [p for p in open_run(run_dir).parts("rollouts", min_step=step) if p.step == step and p.phase == "train"]
    if not parts:
        return ()
    frame = order_rollouts(scan_parts(parts, "rollouts").collect(), ORDER_OF_SIGNAL.get(signal, "length"))
    return tuple({k: _plain(row[k]) for k in _ROLLOUT_KEYS} for row in frame.head(n).iter_rows(named=True))


def _plain(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _find(config: Mapping[str, Any], names: tuple[str, ...], prefix: str = "",
          first: tuple[str, ...] = ()) -> tuple[str, float]:
    """The first positive number named one of ``names`` in a nested config, looking into the sections
    ``first`` before the others: (dotted key, value), or ("", nan)."""
    order = [k for k in first if k in config] + [k for k in config if k not in first]
    for key in order:
        value = config[key]
        dotted = f"{prefix}{key}"
        if key in names and isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return dotted, float(value)
        if isinstance(value, Mapping):
            found = _find(value, names, dotted + ".")
            if found[0]:
                return found
    return "", math.nan
