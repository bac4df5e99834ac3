"""docs/playbook.md is the single source of the alerts' advice: the packaged copy is generated from it, and an
alert of each signal family quotes its section word for word, with the run's own numbers added."""

from __future__ import annotations

from pathlib import Path

import pytest

from opdwatch.alerts.playbook import GENERATED, parse_playbook, playbook, render_module
from opdwatch.alerts.recommend import AlertContext, build_alert
from opdwatch.detector.detector import DetectorState, Evidence
from opdwatch.detector.policy import Decision
from opdwatch.detector.settings import PolicySettings
from opdwatch.detector.signals import SIGNALS
from opdwatch.errors import OpdwatchError

DOC = Path(__file__).resolve().parents[1] / "docs" / "playbook.md"


def test_the_packaged_playbook_is_generated_from_the_doc():
    assert GENERATED.read_text(encoding="utf-8") == render_module(DOC.read_text(encoding="utf-8")), \
        "docs/playbook.md changed: run python -m opdwatch.alerts.playbook docs/playbook.md"


def test_one_section_per_signal_family_naming_its_signals():
    plays = playbook()
    assert set(plays) == {s.family for s in SIGNALS.values()}
    for name, spec in SIGNALS.items():
        assert f"`{name}`" in plays[spec.family].signals, name


def test_a_malformed_section_is_a_one_line_error():
    with pytest.raises(OpdwatchError, match="section 'rollouts': missing do"):
        parse_playbook("## `rollouts`: x\n\n**Signals:** a\n\n**Means:** b\n\n**Look at:** c\n")


def _state(signal: str, level: str = "warning", previous: str = "ok") -> DetectorState:
    ev = (Evidence(signal, 0.5, 0.1, 0.05, 8.0, 9.0, SIGNALS[signal].direction if signal != "teacher_logp" else "up",
                   True),)
    return DetectorState(step=12, level=level, previous=previous, evidence=ev, reason="2 signals changed")


@pytest.mark.parametrize("signal", ["truncation", "rep_share", "adv_gap", "eos_adv", "teacher_logp"])
def test_each_alert_quotes_its_familys_section_and_adds_the_runs_numbers(signal):
    family = SIGNALS[signal].family
    ctx = AlertContext(name="exp", config={"warmup": {"lr": 1e-4}, "opd": {"lr": 3e-3}, "trl": {"lmbda": 1.0}},
                       checkpoints=lambda: [2, 4, 6, 8], restore_margin_steps=3, dashboard_url="http://127.0.0.1:8050")
    msg = build_alert(_state(signal, "alarm", "warning"), ctx, mode="warn", decisions=[], acted=[], beta=0.0,
                      alpha=0.0, policy=PolicySettings(), last_ok_step=10)
    play = playbook()[family]
    assert (msg.family, msg.signal, msg.recommendation) == (family, signal, play.do)
    assert play.look_at in msg.dashboard and "/tokens?run=exp&step=12&phase=train&order=" in msg.dashboard
    assert msg.actions == (
        "raise beta 0->0.2, alpha 0->1 (the watch.policy ladder for an alarm)",  # two rungs on an alarm
        "halve the learning rate: opd.lr 0.003 -> 0.0015",  # opd.lr, not the warm-up's
        "TRL GKD/GOLD: lower the on-policy fraction trl.lmbda 1 -> 0.5 (the golden share that alpha 1 gives)",
        "roll back to the checkpoint of step 6 (the newest at or before step 7: the last healthy step 10 minus "
        "restore_margin_steps 3)")
    assert msg.acted.startswith("nothing: watch.mode is 'warn'")
    assert play.do in msg.text() and msg.level == "ERROR"


def test_act_mode_says_what_it_did_and_recommends_the_next_rung():
    d = Decision(12, "raise", 0.1, 0.5, "detector warning (rep_share): raise beta 0->0.1, alpha 0->0.5")
    msg = build_alert(_state("rep_share"), AlertContext(name="exp"), mode="act", decisions=[d],
                      acted=["raised beta 0->0.1, alpha 0->0.5 (from step 13 on)"], beta=0.0, alpha=0.0,
                      policy=PolicySettings(), last_ok_step=11)
    assert msg.acted == "raised beta 0->0.1, alpha 0->0.5 (from step 13 on)"
    assert msg.actions[0] == ("if it persists after the 5-step cooldown, raise beta 0.1->0.2, alpha 0.5->1 (the "
                              "watch.policy ladder for a warning)")
    assert msg.actions[1] == "halve the learning rate (not found in the run's config)"
    assert len(msg.actions) == 2  # a warning: no rollback yet (the playbook says why)


README = DOC.parents[1] / "README.md"
ALERTS_DOC = DOC.parent / "alerts.md"


def test_the_readme_config_and_example_alert_are_real(tmp_path, monkeypatch):
    import json
    import re

    from opdwatch.config_tree import build, load_yaml
    from opdwatch.detector.settings import WatchConfig
    from opdwatch.reader import open_run

    section = README.read_text(encoding="utf-8").split("## Alerts on Slack or any webhook", 1)[1].split("\n## ", 1)[0]
    yaml_block = re.search(r"```yaml\n(.*?)```", section, re.S)[1]
    assert len(yaml_block.strip().splitlines()) == 3
    assert build(WatchConfig, load_yaml(yaml_block)["watch"], "watch").alerts.slack.enabled
    example = re.search(r"```text\n(.*?)```", section, re.S)[1]
    script = re.search(r"### Try it.*?```python\n(.*?)```", ALERTS_DOC.read_text(encoding="utf-8"), re.S)[1]
    monkeypatch.chdir(tmp_path)
    exec(compile(script, "docs/alerts.md", "exec"), {})
    events = open_run(tmp_path / "runs" / "alert-demo").events()
    texts = [json.loads(d)["text"] for k, d in zip(events["kind"], events["data"]) if k == "alert"]
    assert example.strip() in [t.strip() for t in texts]
