import json
import sys
import types

import pytest

from opdwatch.detector.settings import DetectorSettings, PolicySettings, WandbSettings, WatchConfig
from opdwatch.detector.simulate import TraceSpec, simulate
from opdwatch.detector.watcher import Watcher
from opdwatch.errors import OpdwatchError
from opdwatch.reader import open_run
from opdwatch.recorder import Recorder

ROWS = simulate(TraceSpec(steps=70, onset=40, width=1.0, seed=7))


def _drive(mode: str, tmp_path, **kw):
    rec = Recorder.create(tmp_path / mode)
    watcher = Watcher(WatchConfig(mode=mode, **kw), recorder=rec, run_name=mode, wandb_dir=str(tmp_path))
    applied = []
    for step, metrics in ROWS:
        _, decisions = watcher.step(step, metrics)  # act: applied to watcher.knobs, which write the events
        applied.extend(decisions)
    watcher.close()
    rec.close()
    return open_run(tmp_path / mode).events(), applied, (watcher.knobs.beta, watcher.knobs.alpha)


def test_act_mode_returns_decisions_and_records_every_one(tmp_path):
    events, applied, (beta, alpha) = _drive("act", tmp_path)
    kinds = events["kind"].to_list()
    assert "warning" in kinds and "alarm" in kinds and "alert" in kinds
    assert applied and beta > 0 and alpha > 0
    assert kinds.count("intervention") == len(applied)
    changes = [json.loads(d) for d in events.filter(events["kind"] == "intervention")["data"]]
    assert [c["action"] for c in changes] == [d.action for d in applied] and all(c["applied"] for c in changes)
    assert (changes[-1]["beta"], changes[-1]["alpha"]) == (beta, alpha)


def test_knobs_handed_over_queue_their_events_and_restores_go_through_the_hook():
    from opdwatch.detector.knobs import Controller

    config = WatchConfig(mode="act", policy=PolicySettings(restore_on_alarm=True, restore_margin_steps=3))
    asked: list[int | None] = []
    knobs = Controller(beta=0.0, alpha=0.0)  # no recorder: the loop drains and writes (as the trainer does)
    rec = _Events()
    watcher = Watcher(config, recorder=rec, knobs=knobs, restore=lambda max_step: asked.append(max_step) or 7)
    last_ok, targets = None, []
    for step, metrics in ROWS:
        state, decisions = watcher.step(step, metrics)
        targets += [last_ok - 3 for d in decisions if d.action == "restore"]  # the last ok step minus the margin
        last_ok = step if state.level in ("ok", "warmup") else last_ok
    events = knobs.drain()
    assert events and all(kind != "intervention" for kind, _ in rec.events)  # nothing written behind the loop
    restores = [e for e in events if e.action == "restore"]
    assert restores and asked == targets
    assert restores[0].message.endswith(": restored step 7") and restores[0].restored_step == 7


def test_warn_mode_records_but_never_acts(tmp_path):
    events, applied, knobs = _drive("warn", tmp_path)
    assert applied == [] and knobs == (0.0, 0.0)
    kinds = events["kind"].to_list()
    assert "warning" in kinds and "intervention" not in kinds
    assert any("warn-only" in m for m in events["message"].to_list())


def test_off_mode_does_nothing(tmp_path):
    events, applied, _ = _drive("off", tmp_path)
    assert events.height == 0 and applied == []


def test_bad_mode_is_a_one_line_error():
    with pytest.raises(OpdwatchError, match="watch.mode"):
        Watcher(WatchConfig(mode="loud"))


def test_detector_package_imports_neither_torch_nor_wandb():
    import subprocess
    import sys

    code = "import sys, opdwatch.detector; print('torch' in sys.modules, 'wandb' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_wandb_enabled_watcher_logs_and_alerts_into_an_offline_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from opdwatch.detector.settings import WandbSettings

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    events, applied, _ = _drive("act", tmp_path, wandb=WandbSettings(enabled=True, alert_min_steps=10))
    alerts = events.filter(events["kind"] == "alert")
    assert alerts.height >= 1 and "wandb" in alerts["data"][0]
    assert list(tmp_path.rglob("*.wandb"))


class _Events:
    """Stands in for a Recorder: keeps the events the watcher writes."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def event(self, kind: str, **data) -> None:
        self.events.append((kind, json.dumps(data, sort_keys=True, default=str)))


def _act(watcher: Watcher, rows) -> list[tuple]:
    out = []
    for step, metrics in rows:
        state, decisions = watcher.step(step, metrics)
        out.append((state.level, state.message))
        out.extend((d.action, d.beta, d.alpha, d.reason) for d in decisions)
    return out


@pytest.mark.parametrize("k", [2, 20, 37, 41, 55])
def test_a_saved_and_loaded_watcher_acts_and_records_as_an_uninterrupted_one(k):
    config = WatchConfig(mode="act", detector=DetectorSettings(warmup_steps=3),
                         policy=PolicySettings(cooldown_steps=8, relax_after_steps=5))
    whole_rec = _Events()
    expected = _act(Watcher(config, recorder=whole_rec, run_name="r"), ROWS)
    assert any(e[0] == "raise" for e in expected)
    rec = _Events()
    first = Watcher(config, recorder=rec, run_name="r")
    got = _act(first, ROWS[:k])
    state = json.loads(json.dumps(first.state_dict(), allow_nan=False))
    # the knobs are their holder's to save: a resumed loop starts its knobs where they were
    resumed = Watcher(config, recorder=rec, run_name="r", beta=first.knobs.beta, alpha=first.knobs.alpha)
    resumed.load_state_dict(state)
    got += _act(resumed, ROWS[k:])
    assert got == expected
    assert rec.events == whole_rec.events


def test_a_watcher_state_from_other_settings_is_refused_and_changes_nothing():
    watcher = Watcher(WatchConfig(mode="warn"))
    for step, metrics in ROWS[:10]:
        watcher.step(step, metrics)
    other = Watcher(WatchConfig(mode="warn", detector=DetectorSettings(signals="truncation,loop")))
    detector = other.detector
    with pytest.raises(OpdwatchError, match="detector state was saved with other settings: signals="):
        other.load_state_dict(watcher.state_dict())
    assert other.detector is detector and detector.steps_seen == 0
    with pytest.raises(OpdwatchError, match="watcher state is malformed"):
        other.load_state_dict({"policy": {}})


def test_the_wandb_alert_rate_limit_carries_over_to_the_sink_started_after_a_resume(monkeypatch):
    sent = []
    run = types.SimpleNamespace(log=lambda *a, **k: None, finish=lambda: None,
                                alert=lambda **kw: sent.append(kw["title"]))
    fake = types.SimpleNamespace(run=None, init=lambda **kw: run,
                                 AlertLevel=types.SimpleNamespace(WARN="WARN", ERROR="ERROR"))
    monkeypatch.setitem(sys.modules, "wandb", fake)  # WandbSink imports wandb when it starts
    config = WatchConfig(mode="warn", wandb=WandbSettings(enabled=True, alert_min_steps=100))
    first = Watcher(config)
    for step, metrics in ROWS[:30]:
        first.step(step, metrics)
    state = first.state_dict()
    first.close()
    assert state["wandb"] == {"last_alert": {}} and sent == []

    def resume(last_alert: dict[str, int]) -> list[str]:
        watcher = Watcher(config)
        watcher.load_state_dict({**state, "wandb": {"last_alert": last_alert}})
        assert watcher.state_dict()["wandb"]["last_alert"] == last_alert  # kept until the sink starts
        for step, metrics in ROWS[30:]:  # a warning and an alarm follow
            watcher.step(step, metrics)
        watcher.close()
        out = sent[:]
        sent.clear()
        return out

    assert resume({}) == ["OPD collapse warning", "OPD collapse alarm"]
    assert resume({"WARN": 30, "ERROR": 25}) == []  # alerts sent just before the save hold these back
