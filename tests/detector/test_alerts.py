import json
import time
from pathlib import Path

import pytest

from opdwatch.detector.alerts import LocalSink, WandbSink, alert_for
from opdwatch.detector.detector import DetectorState, Evidence
from opdwatch.detector.knobs import Controller
from opdwatch.detector.policy import Decision
from opdwatch.detector.settings import WandbSettings
from opdwatch.reader import open_run
from opdwatch.recorder import Recorder


def _state(step: int, level: str, previous: str) -> DetectorState:
    ev = (Evidence("eos_adv", -1.2, 0.4, 0.25, -4.0, 8.0, "down", True),)
    return DetectorState(step=step, level=level, previous=previous, evidence=ev, reason="2 signals changed")


def test_alert_levels_and_only_on_escalation():
    assert alert_for(_state(5, "warning", "ok")).level == "WARN"
    alarm = alert_for(_state(6, "alarm", "warning"), run_name="demo")
    assert alarm.level == "ERROR" and "demo" in alarm.title and len(alarm.title) < 64
    assert alert_for(_state(7, "warning", "alarm")) is None
    assert alert_for(_state(8, "ok", "ok")) is None


def test_local_sink_writes_state_alert_and_not_applied_decision_events(tmp_path):
    rec = Recorder.create(tmp_path / "run")
    sink = LocalSink(rec)
    sink.state(_state(5, "warning", "ok"))
    sink.alert(alert_for(_state(5, "warning", "ok")), delivered_to=[])
    # an applied decision is the knob holder's to record (the one writer of interventions), not the sink's
    Controller(beta=0.0, alpha=0.0, recorder=rec).set(beta=0.1, alpha=0.5, reason="detector warning: raise",
                                                       action="raise", step=5)
    sink.not_applied(Decision(6, "raise", 0.2, None, "detector warning: raise"), mode="warn")
    sink.state(DetectorState(step=20, level="ok", previous="warning", evidence=()))
    rec.close()
    events = open_run(tmp_path / "run").events()
    assert events["kind"].to_list() == ["warning", "alert", "intervention", "info", "info"]
    warning = json.loads(events["data"][0])
    assert warning["evidence"][0]["signal"] == "eos_adv"
    assert json.loads(events["data"][1])["level"] == "WARN"
    change = json.loads(events["data"][2])
    assert (change["beta"], change["alpha"], change["action"], change["applied"]) == (0.1, 0.5, "raise", True)
    assert events["message"][2] == "beta 0 -> 0.1, alpha 0 -> 0.5: detector warning: raise"
    assert "warn-only" in events["message"][3] and json.loads(events["data"][3])["applied"] is False
    assert "healthy again" in events["message"][4]


def test_wandb_offline_run_files_contain_the_alert(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    sink = WandbSink(WandbSettings(enabled=True, alert_min_steps=10), name="alert-test")
    try:
        assert wandb.run is not None
        run_dir = Path(wandb.run.dir).parent  # where wandb really writes: an earlier test can pin its directory
        sink.log(5, {"rollout/truncation_rate": 0.02, "detector/level": 1.0})
        alert = alert_for(_state(5, "warning", "ok"), run_name="alert-test")
        assert sink.alert(alert) is True
        assert sink.alert(alert_for(_state(9, "warning", "ok"))) is False  # rate-limited: within 10 steps
    finally:
        sink.close()
    # wandb's service process writes the .wandb file; under load its last flush can trail finish() a little.
    deadline, blob = time.monotonic() + 20, b""
    while time.monotonic() < deadline:
        blob = b"".join(f.read_bytes() for f in run_dir.glob("*.wandb"))
        if alert.title.encode() in blob:
            break
        time.sleep(0.2)
    assert alert.title.encode() in blob
    assert b"eos_adv" in blob  # the alert text carries the evidence
