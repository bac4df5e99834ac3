"""Where a training loop's step metrics go besides the run directory: one small interface, four loggers.

    logger = FanOut([RecorderLogger(rec), WandbLogger(WandbConfig(enabled=True), name="exp1")])
    logger.log(step, {"loss/total": 1.2, "rollout/truncation_rate": 0.05})
    logger.alert("OPD collapse warning", "truncation 0.31 ...", level="WARN")   # True if delivered
    logger.close()

* :class:`MetricLogger` is the protocol: ``log(step, metrics)`` and ``close()``; ``alert(...)`` is optional
  (a logger without it cannot deliver alerts, see :func:`send_alert`).
* :class:`NullLogger` drops everything; :class:`RecorderLogger` merges metrics into the run's step rows;
  :class:`WandbLogger` logs into a wandb run (wandb is imported only when one is built); :class:`FanOut`
  sends to several.

The trainer logs every step's summary through one of these whatever its watch does, and hands the same logger
to the detector, whose wandb alerts then land in that run (no second ``wandb.init``). Torch-free.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from opdwatch.errors import OpdwatchError


@runtime_checkable
class MetricLogger(Protocol):
    def log(self, step: int, metrics: Mapping[str, float]) -> None: ...

    def close(self) -> None: ...


def send_alert(logger: Any, title: str, text: str, *, level: str = "WARN", wait_seconds: float | None = None) -> bool:
    """Deliver an alert through ``logger`` if it can take alerts; returns whether it was delivered."""
    alert = getattr(logger, "alert", None)
    return bool(alert(title, text, level=level, wait_seconds=wait_seconds)) if alert is not None else False


def _numbers(metrics: Mapping[str, Any]) -> dict[str, float]:
    # step summaries may carry non-numeric extras; a logger of metrics takes the numbers only (bool is a number)
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


class NullLogger:
    """Logs nothing (no wandb configured, or a rank other than 0)."""

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        pass

    def close(self) -> None:
        pass


class RecorderLogger:
    """Merges metrics into the run's (step, phase) rows through :meth:`Recorder.log_metrics` (rank 0 writes).
    ``close`` leaves the recorder open: its owner closes it with the run's final status."""

    def __init__(self, recorder: Any, phase: str = "train") -> None:
        self.recorder = recorder
        self.phase = phase

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self.recorder.log_metrics(int(step), self.phase, _numbers(metrics))

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class WandbConfig:
    # A Weights & Biases run for the step metrics and the detector's alerts (optional extra `opdwatch[wandb]`)
    enabled: bool = False  # log every step's metrics to wandb (and send the detector's alerts there)
    project: str = "opdwatch"  # project of the run started here (an active wandb.run is reused instead)
    entity: str = ""  # wandb entity; "" = the default one
    mode: str = ""  # "online", "offline" or "disabled"; "" = WANDB_MODE or wandb's default


class WandbLogger:
    """Logs into the active ``wandb.run`` if there is one, else into a run it starts (and finishes on
    :meth:`close`). ``settings`` is anything with ``project``, ``entity`` and ``mode`` (a :class:`WandbConfig`,
    or the detector's ``WandbSettings``)."""

    def __init__(self, settings: Any = None, *, name: str = "", config: Mapping[str, Any] | None = None,
                 directory: str | os.PathLike[str] | None = None) -> None:
        try:
            import wandb  # optional extra: only imported when wandb logging is switched on
        except ImportError:
            raise OpdwatchError("wandb logging needs wandb: pip install 'opdwatch[wandb]'") from None
        settings = settings or WandbConfig(enabled=True)
        self._wandb = wandb
        self._owned = wandb.run is None
        if self._owned:
            kwargs: dict[str, Any] = {"project": settings.project, "name": name or None, "config": dict(config or {})}
            if settings.entity:
                kwargs["entity"] = settings.entity
            if settings.mode:
                kwargs["mode"] = settings.mode
            if directory is not None:
                kwargs["dir"] = str(directory)
            self.run = wandb.init(**kwargs)
        else:
            self.run = wandb.run

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        # The same step may be logged twice (the loop's summary, then the detector's statistics): wandb merges
        # them into one history row as long as steps never go back.
        if self.run is not None:
            self.run.log(_numbers(metrics), step=int(step))

    def alert(self, title: str, text: str, *, level: str = "WARN", wait_seconds: float | None = None) -> bool:
        """``run.alert`` at ``level`` (a ``wandb.AlertLevel`` name: INFO, WARN, ERROR)."""
        if self.run is None:
            return False
        kwargs: dict[str, Any] = {"title": title, "text": text, "level": getattr(self._wandb.AlertLevel, level)}
        if wait_seconds is not None:
            kwargs["wait_duration"] = wait_seconds
        self.run.alert(**kwargs)
        return True

    def close(self) -> None:
        if self._owned and self.run is not None:
            self.run.finish()
        self.run = None


class FanOut:
    """Sends every call to each of ``loggers``; an alert counts as delivered when one of them delivered it."""

    def __init__(self, loggers: Iterable[Any]) -> None:
        self.loggers = list(loggers)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        for logger in self.loggers:
            logger.log(step, metrics)

    def alert(self, title: str, text: str, *, level: str = "WARN", wait_seconds: float | None = None) -> bool:
        delivered = [send_alert(lg, title, text, level=level, wait_seconds=wait_seconds) for lg in self.loggers]
        return any(delivered)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()
