"""No secret value is ever written into the run directory or its manifest: configs carry environment-variable
names, and every recorded failure, error and traceback is scrubbed of the values they hold."""

from __future__ import annotations

import os

from opdwatch.alerts.console import ConsoleChannel
from opdwatch.config_tree import build, to_dict
from opdwatch.detector.settings import WatchConfig
from opdwatch.reader import open_run
from tests.test_alerts_http import LocalServer, deliveries, readme_loop, refused_url

SLACK = "T0SECRET/B0SECRET/slacktokenSECRET"
HOOK = "hooktokenSECRET"
PASSWORD = "smtp-passwordSECRET"


def test_no_secret_reaches_the_run_directory(tmp_path, monkeypatch):
    server = LocalServer()
    try:
        monkeypatch.setenv("OPDWATCH_WEBHOOK_URL", server.url(f"/fail/{HOOK}"))  # answers 500
        monkeypatch.setenv("SLACK_WEBHOOK_URL", f"notaurl-{SLACK}")  # urllib refuses it, quoting it
        monkeypatch.setenv("SMTP_USER", "opdwatch")
        monkeypatch.setenv("SMTP_PASSWORD", PASSWORD)

        def leaky_send(self, msg, timeout):  # a channel bug whose message holds a secret
            raise RuntimeError(f"cannot post to {os.environ['SLACK_WEBHOOK_URL']}")

        monkeypatch.setattr(ConsoleChannel, "send", leaky_send)
        config = build(WatchConfig, {"mode": "act", "alerts": {
            "timeout_seconds": 1.0, "console": {"enabled": True}, "webhook": {"enabled": True},
            "slack": {"enabled": True},
            "email": {"enabled": True, "host": "127.0.0.1", "port": int(refused_url().split(":")[2].split("/")[0]),
                      "to": "a@example.org", "username_env": "SMTP_USER", "password_env": "SMTP_PASSWORD"}}}, "watch")
        readme_loop(tmp_path / "run", config, run_config={"opd": {"lr": 3e-3}, "watch": to_dict(config)})
    finally:
        server.close()
    run = tmp_path / "run"
    failed = {d["channel"] for d in deliveries(run) if d["delivery"] == "failed"}
    assert failed == {"console", "webhook", "slack", "email"}  # every path that could leak was taken
    manifest = (run / "manifest.json").read_text()
    assert "SLACK_WEBHOOK_URL" in manifest and "SMTP_PASSWORD" in manifest  # the names are there ...
    for path in run.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            for secret in (SLACK, HOOK, PASSWORD, "SECRET"):
                assert secret.encode() not in blob, f"{secret} in {path.relative_to(run)}"  # ... the values never
    assert any("<redacted>" in e for e in open_run(run).events()["data"].to_list())
