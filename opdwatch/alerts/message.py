"""An alert as a person receives it: what fired, what the watch did, what to do, where to look.

:class:`AlertMessage` is plain data (built by opdwatch.alerts.recommend from the detector's state); every
channel renders it from here: :meth:`AlertMessage.text` for the console, Slack and e-mail, and
:meth:`AlertMessage.as_dict` for a webhook body and the run's ``alert`` event.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class AlertMessage:
    run: str                      # run name (or the run directory's name)
    step: int                     # train step of the detector state that alerted
    level: str                    # WARN (warning) or ERROR (alarm)
    state: str                    # the detector level: warning or alarm
    title: str                    # one line, < 64 characters (wandb's limit)
    summary: str                  # the detector's one-line reason and evidence (DetectorState.message)
    signal: str                   # the strongest fired signal ("" when only a truncation guard fired)
    family: str                   # its family: the playbook section quoted
    recommendation: str           # the playbook's **Do:** paragraph for the family, word for word
    actions: tuple[str, ...]      # what to do in this run, with its numbers (knob -> value, checkpoint)
    acted: str                    # what the watch already did (act mode) or why it did nothing
    dashboard: str                # where to look: dashboard step and the playbook's **Look at:** paragraph
    worst_rollouts: tuple[dict[str, Any], ...] = ()  # the worst rollouts of the step by the fired signal
    evidence: tuple[dict[str, Any], ...] = field(default=(), repr=False)  # fired signals (Evidence.as_dict)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["actions"], out["worst_rollouts"], out["evidence"] = (list(self.actions), list(self.worst_rollouts),
                                                                  list(self.evidence))
        out["text"] = self.text()
        return out

    def text(self) -> str:
        """The alert as plain text, the way the console, Slack and e-mail show it."""
        lines = [self.title, "", f"What fired: {self.summary}", f"What the watch did: {self.acted}", "",
                 f"What to do ({self.family} playbook): {self.recommendation}"]
        if self.actions:
            lines += ["In this run:", *(f"  - {a}" for a in self.actions)]
        lines += ["", f"Where to look: {self.dashboard}"]
        if self.worst_rollouts:
            lines.append(f"Worst rollouts at step {self.step} by {self.signal or 'length'}:")
            lines += [f"  - {describe_rollout(r)}" for r in self.worst_rollouts]
        return "\n".join(lines)


def describe_rollout(row: dict[str, Any]) -> str:
    """One rollout of the drill-down as a line: where it is and its health fields."""
    bits = [f"rollout {row['rollout']} (rank {row['rank']})", f"{row['num_tokens']} tokens, {row['finish_reason']}"]
    for key, label in (("repetitive_token_share", "repetitive share"), ("advantage_mean", "mean advantage"),
                       ("zlib_tail_ratio", "zlib tail")):
        if row.get(key) is not None:
            bits.append(f"{label} {row[key]:.2f}")
    if row.get("loop_onset") is not None:
        bits.append(f"loops from token {row['loop_onset']}")
    text = (row.get("text") or "").replace("\n", " ")
    if text:
        bits.append(repr(text[-60:] if len(text) > 60 else text))
    return ", ".join(bits)
