"""The watch never hurts the run it watches: exceptions injected into the recorder's derived fields, the
detector, the policy and an alert channel are caught at the boundary, recorded as ``error`` events with their
tracebacks and printed once, and training continues; ``strict`` re-raises. Shown in the README's
Recorder-API loop and in the trainer, where a warn-mode run's final weights equal a run without the watch."""

from __future__ import annotations

import json

import polars as pl
import pytest
import torch

import opdwatch.recorder
from opdwatch import Recorder, RecorderSettings
from opdwatch.alerts.console import ConsoleChannel
from opdwatch.config_tree import build
from opdwatch.detector.detector import Detector, DetectorState, Evidence
from opdwatch.detector.policy import InterventionPolicy
from opdwatch.detector.settings import WatchConfig
from opdwatch.reader import open_run
from tests.test_alerts_http import readme_loop, watch_config

_update, _decide, _derive = Detector.update, InterventionPolicy.decide, opdwatch.recorder.derive_fields


def inject(monkeypatch, *, derive_at=(), detector_at=(), policy_at=(), escalate_at=None, channel=True) -> None:
    """Make each part raise at the given steps (the channel at every alert)."""
    def derive(ids, offsets, texts, reasons, *rest):
        if inject.step in derive_at:
            raise ZeroDivisionError("injected: derived fields")
        return _derive(ids, offsets, texts, reasons, *rest)

    def update(self, step, metrics):
        inject.step = step + 1  # the recorder of the next step reads it
        if step in detector_at:
            raise ValueError("injected: detector")
        if step == escalate_at:  # a real warning state, so that the alert path and its channel run
            ev = (Evidence("truncation", 0.5, 0.0, 0.03, 4.0, 8.0, "up", True),)
            return DetectorState(step=step, level="warning", previous="ok", evidence=ev, reason="injected")
        return _update(self, step, metrics)

    def decide(self, state, step, *, beta, alpha):
        if step in policy_at:
            raise KeyError("injected: policy")
        return _decide(self, state, step, beta=beta, alpha=alpha)

    def send(self, msg, timeout):
        raise RuntimeError("injected: console channel")

    inject.step = 1
    monkeypatch.setattr(opdwatch.recorder, "derive_fields", derive)
    monkeypatch.setattr(Detector, "update", update)
    monkeypatch.setattr(InterventionPolicy, "decide", decide)
    if channel:
        monkeypatch.setattr(ConsoleChannel, "send", send)


def errors(run_dir) -> dict[str, list[dict]]:
    events = open_run(run_dir).events()
    out: dict[str, list[dict]] = {}
    for kind, message, data in zip(events["kind"], events["message"], events["data"]):
        if kind == "error":
            d = json.loads(data)
            out.setdefault(d["where"], []).append(dict(d, message=message))
    return out


WHERE = {"recorder derived fields", "detector", "policy", "alert channel console"}


def test_the_readme_loop_finishes_with_error_events_printed_once(tmp_path, monkeypatch, capsys):
    inject(monkeypatch, derive_at={3}, detector_at={5, 6}, policy_at={12, 13})
    readme_loop(tmp_path / "run", watch_config(console={"enabled": True}))  # the simulated collapse alerts
    run = open_run(tmp_path / "run")
    assert run.manifest["status"] == "finished" and run.steps().collect().height == 20
    found = errors(tmp_path / "run")
    assert set(found) == WHERE, found.keys()
    assert len(found["detector"]) == 2 and len(found["policy"]) == 2
    for where, rows in found.items():
        assert all("Traceback (most recent call last)" in r["traceback"] and "injected" in r["traceback"]
                   for r in rows), where
    printed = capsys.readouterr().err
    for where in WHERE:
        assert printed.count(f"opdwatch: {where} failed") == 1, where  # once, however often it failed
    # the step whose derived fields failed is still recorded: its rollouts, with the derived fields unknown
    step3 = run.rollouts().filter(pl.col("step") == 3).collect()
    assert step3["finish_reason"].to_list() == ["eos", "length"] and step3["truncated"].to_list() == [False, True]
    assert step3["zlib_tail_ratio"].is_nan().all() and not step3["repetitive"].any()
    failed = [json.loads(d) for k, d in zip(run.events()["kind"], run.events()["data"]) if k == "info"
              and json.loads(d).get("delivery") == "failed"]
    assert failed and all(f["channel"] == "console" for f in failed)


def test_strict_reraises(tmp_path, monkeypatch):
    inject(monkeypatch, derive_at={2}, detector_at={5}, channel=False)
    with pytest.raises(ValueError, match="injected: detector"):
        readme_loop(tmp_path / "watch", build(WatchConfig, {"mode": "warn", "strict": True}, "watch"))
    rec = Recorder.create(tmp_path / "recorder", settings=RecorderSettings(strict=True))
    inject.step = 2
    with pytest.raises(ZeroDivisionError, match="injected: derived fields"):
        rec.record_step(2, token_ids=[[5, 6]], finish_reasons=["eos"], texts=["ab"])


# ------------------------------------------------------------------------------------------ trainer
TRAINER = ["opd.steps=3", "val.every=0", "checkpoint.every=0", "run.seed=3",
           # the tiny models are only scenery here: build them in as few steps as possible
           "demo.student.sft_steps=2", "demo.teacher.sft_steps=2", "demo.teacher.copy_steps=1", "data.sft_size=40"]


def _final_student(run_dir) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "step-000003" / "state.pt", weights_only=False)["student"]


def test_the_trainer_finishes_and_warn_mode_weights_equal_an_unwatched_run(tmp_path, monkeypatch):
    from opdwatch.trainer.config import load_config
    from opdwatch.trainer.loop.loop import train
    from tests.trainer.conftest import TINY

    def config(name: str, *extra: str):
        return load_config(None, [*TINY, *TRAINER, f"models.cache_dir={tmp_path / 'cache'}",
                                  f"run.output_dir={tmp_path}", f"run.name={name}", *extra])

    plain = train(config("plain", "watch.mode=off"))
    inject(monkeypatch, derive_at={1}, detector_at={2}, escalate_at=1, policy_at={3})
    watched = train(config("watched", "watch.mode=warn", "watch.alerts.console.enabled=true"))
    assert open_run(watched).manifest["status"] == "finished"
    assert set(errors(watched)) == WHERE
    a, b = _final_student(plain), _final_student(watched)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bitwise, same seed
