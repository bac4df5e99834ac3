"""Delivery mechanics: the webhook body validated before sending, the bounded queue dropping the oldest with a
count, secrets only from the environment, the boundary's strict switch."""

from __future__ import annotations

import json
import threading

import pytest

from opdwatch.alerts.boundary import Boundary
from opdwatch.alerts.channels import build_channels
from opdwatch.alerts.dispatch import Dispatcher
from opdwatch.alerts.message import AlertMessage
from opdwatch.alerts.settings import AlertsConfig
from opdwatch.alerts.template import BodyError, render_body
from opdwatch.config_tree import build
from opdwatch.detector.settings import WatchConfig
from opdwatch.errors import OpdwatchError


def _msg(step: int, level: str = "WARN") -> AlertMessage:
    return AlertMessage(run="r", step=step, level=level, state="warning", title=f"t{step}", summary="s",
                        signal="truncation", family="rollouts", recommendation="do", actions=("a",), acted="none",
                        dashboard="d", evidence=({"signal": "truncation", "z": float("nan")},))


@pytest.mark.parametrize(("body", "why"), [
    ("{not json", "not valid JSON"), ('["a"]', "the template must be a JSON object"),
    ('{"t": "$nope"}', "unknown placeholder"),
])
def test_a_bad_template_is_refused_when_the_config_is_built(body, why):
    with pytest.raises(OpdwatchError, match=f"watch.alerts.webhook.body: {why}"):
        build(WatchConfig, {"alerts": {"webhook": {"body": body}}}, "watch")


def test_bodies_are_strict_json_and_bounded():
    body = json.loads(render_body('{"t": "$title / ${step}", "n": "$step", "ev": "$evidence"}', _msg(3).as_dict()))
    assert body == {"t": "t3 / 3", "n": 3, "ev": [{"signal": "truncation", "z": None}]}  # NaN -> null
    quotes = _msg(3).as_dict() | {"title": 'a "quoted" \\ title\n'}
    assert json.loads(render_body('{"t": "$title"}', quotes))["t"] == 'a "quoted" \\ title\n'
    with pytest.raises(BodyError, match="bytes"):
        render_body("", _msg(3).as_dict() | {"summary": "x" * 300_000})


class _Blocking:
    name, min_level = "blocking", "WARN"

    def __init__(self) -> None:
        self.entered, self.release, self.sent = threading.Event(), threading.Event(), []

    def send(self, msg: AlertMessage, timeout: float) -> str:
        self.entered.set()
        self.release.wait(10)
        self.sent.append(msg.step)
        return "ok"


def test_a_full_queue_drops_the_oldest_and_counts():
    channel = _Blocking()
    d = Dispatcher([channel], timeout=5.0, queue_size=2, min_steps=0)
    d.submit(_msg(1))
    assert channel.entered.wait(5)  # step 1 is in flight; 2 and 3 wait; 4 and 5 push out 2 and 3
    for step in (2, 3, 4, 5):
        d.submit(_msg(step))
    channel.release.set()
    outcomes = d.close()
    assert channel.sent == [1, 4, 5] and d.dropped == 2
    dropped = [o for o in outcomes if o.status == "dropped"]
    assert [o.step for o in dropped] == [2, 3] and dropped[-1].why.endswith("2 dropped so far")
    assert [o.step for o in outcomes if o.status == "delivered"] == [1, 4, 5]


def test_min_level_routes_alarms_only():
    channel = _Blocking()
    channel.min_level = "ERROR"
    channel.release.set()
    d = Dispatcher([channel], timeout=5.0, queue_size=4, min_steps=0)
    d.submit(_msg(1, "WARN"))
    d.submit(_msg(2, "ERROR"))
    d.close()
    assert channel.sent == [2]


def test_secrets_come_from_the_environment_only(monkeypatch):
    monkeypatch.delenv("SLACK_WEBHOOK_URL", raising=False)
    config = build(AlertsConfig, {"slack": {"enabled": True}}, "watch.alerts")
    with pytest.raises(OpdwatchError, match="environment variable SLACK_WEBHOOK_URL is not set"):
        build_channels(config)
    monkeypatch.setenv("SLACK_WEBHOOK_URL", "http://127.0.0.1:9/hook-secret")
    channels, secrets = build_channels(config)
    assert [c.name for c in channels] == ["slack"] and secrets == ("http://127.0.0.1:9/hook-secret",)
    with pytest.raises(OpdwatchError, match="never the secret itself"):
        build(AlertsConfig, {"slack": {"url_env": "https://hooks.slack.com/services/T0/B0/x"}}, "watch.alerts")


def test_the_boundary_suppresses_records_and_strict_reraises(capsys):
    events = []

    class Rec:
        def event(self, kind, **kw):
            events.append((kind, kw))

    guard = Boundary(Rec(), scrub=("s3cret",))
    for step in (1, 2):
        with guard("detector", step):
            raise ValueError("bad s3cret")
    assert [(k, kw["step"], kw["message"]) for k, kw in events] == [("error", s, "detector failed: ValueError: bad "
                                                                     "<redacted>") for s in (1, 2)]
    assert "s3cret" not in events[0][1]["traceback"] and "Traceback" in events[0][1]["traceback"]
    assert capsys.readouterr().err.count("opdwatch: detector failed") == 1
    with pytest.raises(KeyboardInterrupt), guard("detector", 3):  # never swallowed
        raise KeyboardInterrupt
    with pytest.raises(ValueError), Boundary(Rec(), strict=True)("policy", 4):
        raise ValueError("strict")
