import pytest

from opdwatch.detector.settings import WatchConfig
from opdwatch.detector.simulate import TraceSpec, simulate
from opdwatch.detector.watcher import Watcher
from opdwatch.errors import OpdwatchError
from opdwatch.reader import open_run
from opdwatch.recorder import Recorder

ROWS = simulate(TraceSpec(steps=70, onset=40, width=1.0, seed=7))


def _drive(mode: str, tmp_path, **kw):
    rec = Recorder.create(tmp_path / mode)
    watcher = Watcher(WatchConfig(mode=mode, **kw), recorder=rec, run_name=mode, wandb_dir=str(tmp_path))
    beta = alpha = 0.0
    applied = []
    for step, metrics in ROWS:
        _, decisions = watcher.step(step, metrics, beta=beta, alpha=alpha)
        for d in decisions:
            applied.append(d)
            beta = d.beta if d.beta is not None else beta
            alpha = d.alpha if d.alpha is not None else alpha
    watcher.close()
    rec.close()
    return open_run(tmp_path / mode).events(), applied, (beta, alpha)


def test_act_mode_returns_decisions_and_records_every_one(tmp_path):
    events, applied, (beta, alpha) = _drive("act", tmp_path)
    kinds = events["kind"].to_list()
    assert "warning" in kinds and "alarm" in kinds and "alert" in kinds
    assert applied and beta > 0 and alpha > 0
    assert kinds.count("intervention") == len(applied)


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
