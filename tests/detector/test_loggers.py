"""opdwatch.loggers: the metric-logger interface, and the detector sharing the loop's wandb run."""

import subprocess
import sys
import types

import pytest

from opdwatch.detector.settings import WandbSettings, WatchConfig
from opdwatch.detector.simulate import TraceSpec, simulate
from opdwatch.detector.watcher import Watcher
from opdwatch.loggers import FanOut, MetricLogger, NullLogger, RecorderLogger, WandbConfig, WandbLogger, send_alert
from opdwatch.reader import open_run
from opdwatch.recorder import Recorder

ROWS = simulate(TraceSpec(steps=60, onset=35, width=1.0, seed=11))


class _Fake:
    """A stand-in wandb module: counts runs started, keeps what was logged and alerted."""

    def __init__(self) -> None:
        self.run = None
        self.inits = 0
        self.logged: list[tuple[int, dict]] = []
        self.alerts: list[dict] = []
        self.finished = 0
        self.AlertLevel = types.SimpleNamespace(INFO="INFO", WARN="WARN", ERROR="ERROR")

    def init(self, **kwargs):
        self.inits += 1
        self.init_kwargs = kwargs
        return types.SimpleNamespace(log=lambda metrics, step: self.logged.append((step, metrics)),
                                     alert=lambda **kw: self.alerts.append(kw), finish=self._finish)

    def _finish(self) -> None:
        self.finished += 1


@pytest.fixture
def fake_wandb(monkeypatch) -> _Fake:
    fake = _Fake()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    return fake


def test_every_logger_has_the_interface():
    assert all(isinstance(lg, MetricLogger) for lg in (NullLogger(), FanOut([]), RecorderLogger(None)))
    assert send_alert(NullLogger(), "t", "x") is False  # a logger without alert() delivers nothing


def test_recorder_logger_merges_metrics_into_the_step_row(tmp_path):
    rec = Recorder.create(tmp_path / "run")
    logger = FanOut([RecorderLogger(rec), NullLogger()])
    logger.log(3, {"loss/total": 1.5, "note": "not a number"})
    logger.log(3, {"optim/lr": 0.01})
    logger.close()  # leaves the recorder to its owner
    rec.close()
    row = open_run(tmp_path / "run").steps("train").collect().row(0, named=True)
    assert (row["step"], row["loss/total"], row["optim/lr"]) == (3, 1.5, 0.01) and "note" not in row


def test_wandb_logger_starts_or_reuses_a_run_and_only_finishes_its_own(fake_wandb):
    logger = WandbLogger(WandbConfig(enabled=True, project="p", mode="offline"), name="n", directory="/tmp/x")
    assert fake_wandb.inits == 1 and fake_wandb.init_kwargs["mode"] == "offline"
    assert fake_wandb.init_kwargs["dir"] == "/tmp/x" and fake_wandb.init_kwargs["name"] == "n"
    logger.log(2, {"a": 1, "b": True, "c": "text"})
    assert fake_wandb.logged == [(2, {"a": 1.0, "b": 1.0})]
    assert logger.alert("title", "text", level="ERROR", wait_seconds=5.0) is True
    assert fake_wandb.alerts == [{"title": "title", "text": "text", "level": "ERROR", "wait_duration": 5.0}]
    fake_wandb.run = logger.run  # an active run: a second logger joins it instead of starting one
    joined = WandbLogger(WandbConfig(enabled=True))
    joined.close()
    assert fake_wandb.inits == 1 and fake_wandb.finished == 0
    logger.close()
    assert fake_wandb.finished == 1


def test_the_watcher_alerts_into_the_run_it_is_handed_and_starts_none(fake_wandb):
    loop_logger = WandbLogger(WandbConfig(enabled=True), name="loop")
    # the watch's own wandb settings say "disabled": with a logger handed over, the loop's run is used anyway
    watcher = Watcher(WatchConfig(mode="warn", wandb=WandbSettings(alert_min_steps=100)), logger=loop_logger)
    for step, metrics in ROWS:
        loop_logger.log(step, metrics)  # the loop logs its step metrics ...
        watcher.step(step, metrics)     # ... the watcher adds its statistics and alerts
    watcher.close()
    assert fake_wandb.inits == 1 and fake_wandb.finished == 0  # one run, still the loop's to finish
    assert [a["title"] for a in fake_wandb.alerts] == ["OPD collapse warning", "OPD collapse alarm"]
    watcher_rows = [m for _, m in fake_wandb.logged if "detector/level" in m]
    assert watcher_rows and all("rollout/truncation_rate" not in m for m in watcher_rows)
    loop_logger.close()
    assert fake_wandb.finished == 1


def test_a_watcher_of_its_own_starts_its_run_at_the_first_step_and_logs_the_metrics_too(fake_wandb):
    watcher = Watcher(WatchConfig(mode="warn", wandb=WandbSettings(enabled=True)), run_name="own")
    assert fake_wandb.inits == 0
    watcher.step(*ROWS[0])
    assert fake_wandb.inits == 1 and "rollout/truncation_rate" in fake_wandb.logged[0][1]
    watcher.close()
    assert fake_wandb.finished == 1


def test_loggers_import_neither_torch_nor_wandb():
    code = "import sys, opdwatch.loggers; print('torch' in sys.modules, 'wandb' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
