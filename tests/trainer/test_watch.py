import io
import json

import pytest
import torch

from opdwatch.detector.settings import DetectorSettings, PolicySettings, WatchConfig
from opdwatch.detector.simulate import TraceSpec, simulate
from opdwatch.reader import open_run
from opdwatch.recorder import Recorder
from opdwatch.trainer.config import load_config
from opdwatch.trainer.loop.checkpoint import save_checkpoint
from opdwatch.trainer.loop.controller import Controller, record_events
from opdwatch.trainer.loop.loop import train
from opdwatch.trainer.loop.watch import TrainerWatch, restore_healthy

ROWS = simulate(TraceSpec(steps=60, onset=35, width=1.0, seed=11))


def _events(path):
    return open_run(path).events()


def test_act_mode_moves_the_controller_and_leaves_recording_of_changes_to_the_loop(tmp_path):
    rec = Recorder.create(tmp_path / "run")
    ctl = Controller(beta=0.0, alpha=0.0)
    watch = TrainerWatch(WatchConfig(mode="act"), rec, controller=ctl, run_name="t")
    levels = []
    for step, metrics in ROWS:
        state = watch(step, metrics)
        ctl.step = step
        levels.append(state.level)
    watch.close()
    rec.close()
    assert "warning" in levels and ctl.beta >= 0.1 and ctl.alpha >= 0.5
    changes = ctl.drain()  # what the loop turns into "intervention" events
    assert changes and all(c.reason.startswith("detector ") for c in changes)
    kinds = _events(tmp_path / "run")["kind"].to_list()
    assert {"warning", "alarm", "alert"} <= set(kinds) and "intervention" not in kinds


def test_warn_mode_never_touches_the_controller(tmp_path):
    rec = Recorder.create(tmp_path / "run")
    ctl = Controller(beta=0.0, alpha=0.0)
    watch = TrainerWatch(WatchConfig(mode="warn"), rec, controller=ctl)
    for step, metrics in ROWS:
        watch(step, metrics)
    rec.close()
    assert (ctl.beta, ctl.alpha) == (0.0, 0.0) and ctl.drain() == []
    assert "warn-only" in " ".join(_events(tmp_path / "run")["message"].to_list())


def test_off_mode_is_inert(tmp_path):
    rec = Recorder.create(tmp_path / "run")
    watch = TrainerWatch(WatchConfig(mode="off"), rec, controller=Controller(beta=0, alpha=0))
    assert all(watch(step, m) is None for step, m in ROWS)
    rec.close()
    assert _events(tmp_path / "run").height == 0


def test_restore_on_alarm_rolls_back_to_a_checkpoint_before_the_trouble(tmp_path):
    run_dir = tmp_path / "run"
    rec = Recorder.create(run_dir)
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.Adam(model.parameters())
    saved = {}
    for step in (10, 20, 30):  # checkpoints with recognisable weights
        with torch.no_grad():
            model.weight.fill_(float(step))
        save_checkpoint(run_dir, step, {"student": model.state_dict(), "optimizer": opt.state_dict()}, keep=5)
        saved[step] = float(step)
    with torch.no_grad():
        model.weight.fill_(-1.0)
    config = WatchConfig(mode="act", policy=PolicySettings(restore_on_alarm=True, restore_margin_steps=3))
    ctl = Controller(beta=0.0, alpha=0.0)
    watch = TrainerWatch(config, rec, controller=ctl,
                         restore=lambda max_step: restore_healthy(run_dir, max_step, model, opt))
    for step, metrics in ROWS:
        watch(step, metrics)
    record_events(rec, ctl.drain())  # what the loop does after each step: restores are controller events too
    rec.close()
    events = _events(run_dir)
    restores = events.filter(events["message"].str.contains("restored step"))
    assert restores.height >= 1
    data = json.loads(restores["data"][0])
    assert data["restored_step"] in saved and data["restored_step"] <= watch.last_ok_step
    assert model.weight.flatten()[0].item() == pytest.approx(saved[data["restored_step"]])


class _Events:
    """Stands in for the Recorder: keeps the events the watch writes."""

    def __init__(self):
        self.events = []

    def event(self, kind, **data):
        self.events.append((kind, json.dumps(data, sort_keys=True, default=str)))


def _watch_rows(watch, rows, ctl):
    levels = []
    for step, metrics in rows:
        levels.append(watch(step, metrics).level)
        ctl.step = step
    return levels


def test_watch_state_through_a_torch_checkpoint_continues_as_if_uninterrupted():
    config = WatchConfig(mode="act", policy=PolicySettings(cooldown_steps=8))
    whole_rec, whole_ctl = _Events(), Controller(beta=0.0, alpha=0.0)
    whole = TrainerWatch(config, whole_rec, controller=whole_ctl)
    expected = _watch_rows(whole, ROWS, whole_ctl)
    rec, ctl = _Events(), Controller(beta=0.0, alpha=0.0)
    first = TrainerWatch(config, rec, controller=ctl)
    got = _watch_rows(first, ROWS[:40], ctl)  # split inside the episode and the cooldown
    buffer = io.BytesIO()
    torch.save({"watch": first.state_dict()}, buffer)
    buffer.seek(0)
    resumed = TrainerWatch(config, rec, controller=ctl)  # as loop.train builds it on resume (ctl restored)
    resumed.resume(torch.load(buffer, weights_only=False)["watch"], step=40)
    got += _watch_rows(resumed, ROWS[40:], ctl)
    assert got == expected and rec.events == whole_rec.events
    assert [c.message for c in ctl.drain()] == [c.message for c in whole_ctl.drain()]
    assert resumed.last_ok_step == whole.last_ok_step  # where a rollback would go (restore_margin_steps before)
    assert repr(resumed.state_dict()) == repr(whole.state_dict())


def test_watch_without_usable_state_starts_afresh_and_says_so():
    state = TrainerWatch(WatchConfig(mode="warn"), _Events(), controller=Controller(beta=0.0, alpha=0.0))
    for step, metrics in ROWS[:10]:
        state(step, metrics)
    saved = state.state_dict()
    off = TrainerWatch(WatchConfig(mode="off"), _Events(), controller=Controller(beta=0.0, alpha=0.0))
    assert off.state_dict() is None  # e.g. ranks other than 0
    for ckpt_watch, config, why in (
        (None, WatchConfig(mode="warn"), "the checkpoint holds no watch state"),  # an older checkpoint
        (saved, WatchConfig(mode="warn", detector=DetectorSettings(h=6.0)), "other settings: h=5.0 (now 6.0)"),
    ):
        rec = _Events()
        watch = TrainerWatch(config, rec, controller=Controller(beta=0.0, alpha=0.0))
        watch.resume(ckpt_watch, step=10)
        assert watch.watcher.detector.steps_seen == 0
        [(kind, data)] = rec.events
        assert kind == "info" and why in json.loads(data)["message"] and json.loads(data)["step"] == 10
    rec = _Events()
    TrainerWatch(WatchConfig(mode="off"), rec, controller=Controller(beta=0.0, alpha=0.0)).resume(saved, step=10)
    assert rec.events == []


def test_a_watch_state_from_before_the_policy_lost_its_knobs_still_resumes():
    # Older checkpoints: last_ok_step beside the watcher's state, and beta/alpha in the policy's state.
    config = WatchConfig(mode="act", policy=PolicySettings(cooldown_steps=8))
    whole_rec, whole_ctl = _Events(), Controller(beta=0.0, alpha=0.0)
    whole = TrainerWatch(config, whole_rec, controller=whole_ctl)
    expected = _watch_rows(whole, ROWS, whole_ctl)
    rec, ctl = _Events(), Controller(beta=0.0, alpha=0.0)
    first = TrainerWatch(config, rec, controller=ctl)
    got = _watch_rows(first, ROWS[:40], ctl)
    new = first.state_dict()["watcher"]
    old = {"watcher": {**{k: v for k, v in new.items() if k != "last_ok_step"},
                       "policy": {**new["policy"], "beta": ctl.beta, "alpha": ctl.alpha}},
           "last_ok_step": new["last_ok_step"]}
    resumed = TrainerWatch(config, rec, controller=ctl)
    resumed.resume(old, step=40)
    got += _watch_rows(resumed, ROWS[40:], ctl)
    assert got == expected and rec.events == whole_rec.events
    assert [c.message for c in ctl.drain()] == [c.message for c in whole_ctl.drain()]


def test_restore_healthy_returns_none_without_an_old_enough_checkpoint(tmp_path):
    model = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    save_checkpoint(tmp_path, 12, {"student": model.state_dict(), "optimizer": opt.state_dict()}, keep=2)
    assert restore_healthy(tmp_path, 11, model, opt) is None
    assert restore_healthy(tmp_path, 12, model, opt) == 12



def test_watch_in_the_training_loop_records_and_intervenes(tiny_config):
    # A 16-token budget makes the tiny models truncate often: the truncation guard alarms within a few steps.
    config = tiny_config("opd.steps=6", "opd.beta=0.0", "opd.alpha=0.0", "watch.mode=act",
                         "watch.detector.warn_truncation=0.05", "watch.detector.alarm_truncation=0.1",
                         "watch.detector.guard_steps=1", "val.every=0")
    run = open_run(train(config))
    events = run.events()
    kinds = events["kind"].to_list()
    assert "alarm" in kinds and "alert" in kinds and "intervention" in kinds
    change = json.loads(events.filter(events["kind"] == "intervention")["data"][0])
    assert change["beta"] > 0 and change["reason"].startswith("detector ")
    betas = run.steps("train").collect()["control/beta"].to_list()
    assert betas[0] == 0.0 and betas[-1] > 0.0  # the raise applied from the next step on
    assert run.manifest["config"]["watch"]["mode"] == "act"


def test_watch_config_errors_are_one_line(tmp_path):
    from opdwatch.errors import OpdwatchError

    for bad in (["watch.mode=loud"], ["watch.detector.h=-1"], ["watch.policy.nope=1"]):
        with pytest.raises(OpdwatchError) as err:
            load_config(None, [f"run.output_dir={tmp_path}", *bad])
        assert "\n" not in str(err.value)


def test_demo_opd_watch_preset_loads():
    from pathlib import Path

    config = load_config(Path(__file__).parents[2] / "trainer" / "recipes" / "demo" / "configs" / "demo_opd_watch.yaml")
    assert config.watch.mode == "act" and config.watch.policy.restore_on_alarm
    assert (config.opd.beta, config.opd.alpha) == (0.0, 0.0)
