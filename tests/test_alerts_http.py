"""Webhook and Slack channels against a real HTTP server on loopback (http.server in a thread): the payloads
carry the recommendation and the evidence; endpoints that hang, answer 500 or refuse the connection cost a
20-step run less than the configured timeout in total, and are recorded as failed deliveries."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from opdwatch import Recorder
from opdwatch.alerts.playbook import playbook
from opdwatch.config_tree import build
from opdwatch.detector.settings import WatchConfig
from opdwatch.detector.simulate import TraceSpec, simulate
from opdwatch.detector.watcher import Watcher
from opdwatch.reader import open_run

# A collapse within 20 steps: warning at step 9, alarm at 10 (the detector's defaults, 4-step warm-up)
ROWS = simulate(TraceSpec(steps=20, onset=10, width=1.0, seed=3))


class LocalServer:
    """ThreadingHTTPServer on 127.0.0.1: ``/ok`` answers 200, ``/fail`` 500, ``/hang`` never answers."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict]] = []
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append((self.path, body))
                if self.path.startswith("/hang"):
                    server.release.wait(30)
                    return
                self.send_response(500 if self.path.startswith("/fail") else 200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}{path}"

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = LocalServer()
    yield s
    s.close()


def refused_url() -> str:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/nobody"


def watch_config(mode: str = "warn", **alerts: object) -> WatchConfig:
    return build(WatchConfig, {"mode": mode, "alerts": alerts}, "watch")


def readme_loop(run_dir, config: WatchConfig, *, rows=ROWS, step_seconds: float = 0.0, before_step=None,
                run_config=None) -> tuple[Watcher, float]:
    """The README's Recorder-API loop with a Watcher fed its metrics (the simulated collapse's step metrics
    ride along in ``metrics=``, so the detector sees a collapse). Returns the watcher and the seconds spent
    inside it (its steps and close)."""
    rng = np.random.default_rng(0)
    rec = Recorder.create(run_dir, config=run_config or {"opd": {"lr": 3e-3}}, tokenizer_info={"eos_token_ids": [2]})
    watcher = Watcher(config, recorder=rec, run_name="readme", run_config=rec.manifest["config"])
    in_watch = 0.0
    for step, sim in rows:
        if before_step is not None:
            before_step(step)
        responses = [rng.integers(3, 1000, size=n) for n in (12, 30)]
        student = [rng.normal(-1, 0.3, size=len(r)) for r in responses]
        teacher = [rng.normal(-1, 0.5, size=len(r)) for r in responses]
        m = rec.record_step(step, token_ids=responses, student_logp=student, teacher_logp=teacher,
                            finish_reasons=["eos", "length"], texts=["...", "... loop loop"], prompt_ids=["q1", "q1"],
                            metrics={"loss/total": 0.1, **sim})
        t0 = time.perf_counter()
        watcher.step(step, m)
        in_watch += time.perf_counter() - t0
        time.sleep(step_seconds)  # the training step's own work
    t0 = time.perf_counter()
    watcher.close()
    in_watch += time.perf_counter() - t0
    rec.close()
    return watcher, in_watch


def deliveries(run_dir) -> list[dict]:
    events = open_run(run_dir).events()
    rows = [dict(json.loads(d), message=m) for k, m, d in zip(events["kind"], events["message"], events["data"])
            if k == "info"]
    return [r for r in rows if "delivery" in r]


def test_webhook_and_slack_payloads_carry_the_recommendation_and_the_evidence(tmp_path, server, monkeypatch):
    monkeypatch.setenv("OPDWATCH_WEBHOOK_URL", server.url("/ok/hook"))
    monkeypatch.setenv("SLACK_WEBHOOK_URL", server.url("/ok/slack"))
    body = '{"text": "$title at step $step", "do": "$recommendation", "evidence": "$evidence", "step": "$step"}'
    config = watch_config(webhook={"enabled": True, "body": body}, slack={"enabled": True})
    readme_loop(tmp_path / "run", config)

    hooks = [b for p, b in server.requests if p == "/ok/hook"]
    slack = [b for p, b in server.requests if p == "/ok/slack"]
    assert len(hooks) == len(slack) == 2  # the warning and the alarm
    warning = hooks[0]
    assert warning["text"] == f"OPD collapse warning in readme at step {warning['step']}"
    assert isinstance(warning["step"], int)  # a lone placeholder keeps the field's type
    fired = {e["signal"] for e in warning["evidence"]}
    assert fired and all(e["fired"] for e in warning["evidence"])
    families = {p.family: p.do for p in playbook().values()}
    assert warning["do"] in families.values()  # the playbook's text, word for word
    # Slack: Block Kit, with the playbook text, this run's numbers and the evidence
    text = json.dumps(slack[0])
    assert slack[0]["blocks"][0]["type"] == "header" and "OPD collapse warning" in slack[0]["text"]
    assert "opd.lr 0.003 -&gt; 0.0015" in text  # mrkdwn-escaped arrow of the learning-rate advice
    assert "raise beta 0-&gt;0.1, alpha 0-&gt;0.5" in text  # the policy's first rung
    assert any(signal in slack[0]["text"] for signal in fired)
    alarm = json.dumps(slack[1])
    assert "roll back to the newest checkpoint at or before step" in alarm
    assert "nothing: watch.mode is 'warn'" in alarm
    # every delivery recorded
    done = deliveries(tmp_path / "run")
    assert sorted((d["channel"], d["delivery"]) for d in done) == [("slack", "delivered")] * 2 + \
        [("webhook", "delivered")] * 2


STEP_SECONDS = 0.03  # a training step's own work in the timed loops


@pytest.mark.parametrize("endpoint", ["hang", "fail", "refused"])
def test_a_bad_endpoint_costs_less_than_the_timeout_in_total_and_is_recorded(tmp_path, server, monkeypatch,
                                                                           endpoint):
    timeout = 1.0
    url = refused_url() if endpoint == "refused" else server.url(f"/{endpoint}")
    monkeypatch.setenv("OPDWATCH_WEBHOOK_URL", url)
    monkeypatch.setenv("SLACK_WEBHOOK_URL", url)
    config = watch_config(timeout_seconds=timeout, webhook={"enabled": True}, slack={"enabled": True})
    # The time the loop spent inside the watch (its 20 steps and close) bounds how much it slowed the run; it is
    # measured directly because the recording around it varies by more than that on a loaded machine.
    _, in_watch = readme_loop(tmp_path / "run", config, step_seconds=STEP_SECONDS)
    assert in_watch < timeout, in_watch
    failed = [d for d in deliveries(tmp_path / "run") if d["delivery"] == "failed"]
    assert {d["channel"] for d in failed} == {"webhook", "slack"}
    why = {"hang": "timed out", "fail": "HTTP 500", "refused": "cannot connect"}[endpoint]
    assert any(why in d["message"] for d in failed), [d["message"] for d in failed]
    assert not any(url in d["message"] for d in failed)  # the URL is a secret


def test_rate_limit_suppresses_and_is_recorded(tmp_path, server, monkeypatch):
    monkeypatch.setenv("OPDWATCH_WEBHOOK_URL", server.url("/ok"))
    # warning, healthy again, warning within min_steps: the second warning is suppressed
    rows = ROWS
    flapping = rows[:10] + [(s, rows[3][1]) for s, _ in rows[10:16]] + [(s, m) for (s, _), (_, m) in
                                                                      zip(rows[16:], rows[8:12], strict=False)]
    config = build(WatchConfig, {"mode": "warn", "detector": {"recover_steps": 1},
                                 "alerts": {"min_steps": 50, "webhook": {"enabled": True}}}, "watch")
    readme_loop(tmp_path / "run", config, rows=flapping)
    done = deliveries(tmp_path / "run")
    assert any(d["delivery"] == "suppressed" and "rate limit" in d["message"] for d in done), done
    assert len(server.requests) == sum(d["delivery"] == "delivered" for d in done)
