"""The e-mail channel against a local SMTP sink (aiosmtpd on loopback): the alarm arrives as a person reads
it, a warning is routed elsewhere (min_level ERROR), and an unreachable server is a failed delivery."""

from __future__ import annotations

import email
import json
import socket

import pytest

from tests.test_alerts_http import deliveries, readme_loop, watch_config

aiosmtpd = pytest.importorskip("aiosmtpd.controller")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sink:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 OK"


@pytest.fixture
def smtp_sink():
    sink = Sink()
    controller = aiosmtpd.Controller(sink, hostname="127.0.0.1", port=_free_port())
    controller.start()
    yield sink, controller.port
    controller.stop()


def test_the_alarm_arrives_by_mail_with_what_to_do(tmp_path, smtp_sink, monkeypatch):
    sink, port = smtp_sink
    config = watch_config(mode="act", email={"enabled": True, "host": "127.0.0.1", "port": port,
                                             "to": "oncall@example.org, lead@example.org"})
    readme_loop(tmp_path / "run", config)
    assert len(sink.messages) == 1  # the alarm only: min_level ERROR keeps the warning off e-mail
    sender, rcpt, content = sink.messages[0]
    assert sender == "opdwatch@localhost" and rcpt == ["oncall@example.org", "lead@example.org"]
    mail = email.message_from_bytes(content)
    assert mail["Subject"] == "[opdwatch ERROR] OPD collapse alarm in readme"
    body = mail.get_payload(decode=True).decode()
    assert "What the watch did: raised beta" in body  # act mode already moved the knobs
    assert "What to do (rollouts playbook)" in body or "What to do (advantage playbook)" in body
    assert "roll back to the newest checkpoint at or before step" in body
    assert "Worst rollouts at step" in body and "rollout 1 (rank 0), 30 tokens, length" in body
    done = deliveries(tmp_path / "run")
    assert [(d["channel"], d["delivery"], d["level"]) for d in done] == [("email", "delivered", "ERROR")]


def test_an_unreachable_smtp_server_is_a_failed_delivery(tmp_path):
    config = watch_config(timeout_seconds=1.0, email={"enabled": True, "host": "127.0.0.1", "port": _free_port(),
                                                      "to": "oncall@example.org", "min_level": "WARN"})
    _, in_watch = readme_loop(tmp_path / "run", config)
    assert in_watch < 1.0
    failed = [d for d in deliveries(tmp_path / "run") if d["delivery"] == "failed"]
    assert failed and all(d["channel"] == "email" for d in failed)
    assert "ConnectionRefusedError" in failed[0]["message"], json.dumps(failed)
