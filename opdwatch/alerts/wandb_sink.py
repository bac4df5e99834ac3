"""Detector statistics and rate-limited ``run.alert``s into a Weights & Biases run.

The run is the training loop's (a :class:`~opdwatch.loggers.WandbLogger` it hands over) or one of its own.
wandb is an optional extra, imported only when a run is started. Moved here from opdwatch.detector.alerts
(which still exports it) so that everything that sends alerts out of the process lives in opdwatch.alerts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from opdwatch.loggers import WandbLogger, send_alert

if TYPE_CHECKING:  # opdwatch.detector exports this class: importing it from there here would be a cycle
    from opdwatch.detector.settings import WandbSettings


class WandbSink:
    """With ``logger`` (the training loop's wandb logger) it uses that run; otherwise it starts one through
    :class:`~opdwatch.loggers.WandbLogger` (which reuses an active ``wandb.run``) and finishes it on
    :meth:`close`. Alerts are rate-limited twice: at most one per level every ``alert_min_steps`` steps here,
    and wandb's own ``wait_duration`` for same-title repeats."""

    name = "wandb"

    def __init__(self, settings: WandbSettings, *, name: str = "", config: Mapping[str, Any] | None = None,
                 directory: str | os.PathLike[str] | None = None, logger: Any = None) -> None:
        self.settings = settings
        self._owned = logger is None
        self.logger = WandbLogger(settings, name=name, config=config, directory=directory) if logger is None \
            else logger
        self._last_alert: dict[str, int] = {}

    @property
    def run(self) -> Any:
        """The wandb run (None once closed, or when the logger handed over is not a wandb one)."""
        return getattr(self.logger, "run", None)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        if self.settings.log_metrics:
            self.logger.log(int(step), metrics)

    def rate_limited(self, alert: Any) -> int | None:
        """The step of the last alert of this level when ``alert`` falls inside the rate limit, else None."""
        last = self._last_alert.get(alert.level)
        return last if last is not None and alert.step - last < self.settings.alert_min_steps else None

    def alert(self, alert: Any) -> bool:
        """Send the alert (anything with step, level, title, text) unless rate-limited; returns whether it
        was sent."""
        if self.rate_limited(alert) is not None:
            return False
        self._last_alert[alert.level] = alert.step
        return send_alert(self.logger, alert.title, alert.text, level=alert.level,
                          wait_seconds=self.settings.alert_wait_seconds)

    def state_dict(self) -> dict[str, Any]:
        """The rate limit's memory: the step of the last alert sent per level."""
        return {"last_alert": dict(self._last_alert)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._last_alert = {str(level): int(step) for level, step in state["last_alert"].items()}

    def close(self) -> None:
        if self._owned:  # a logger handed over belongs to the loop, which closes it
            self.logger.close()
