"""`opdwatch dashboard`: argument handling, safe defaults, one-line errors; dash stays out of `import opdwatch`."""

from __future__ import annotations

import subprocess
import sys

import pytest

from opdwatch.cli import main


def test_missing_or_not_a_directory_root_is_a_one_line_error(tmp_path, capsys):
    assert main(["dashboard", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such directory" in err
    (tmp_path / "file").write_text("x")
    assert main(["dashboard", str(tmp_path / "file")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_bad_port_is_a_one_line_error(tmp_path, capsys):
    assert main(["dashboard", str(tmp_path), "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "expected"), [
    ([], ("127.0.0.1", 8050, False)),
    (["--host", "0.0.0.0", "--port", "9000", "--debug"], ("0.0.0.0", 9000, True)),
])
def test_serve_gets_localhost_and_no_debug_by_default(tmp_path, monkeypatch, capsys, argv, expected):
    pytest.importorskip("dash")
    import opdwatch.dashboards.app

    calls = []
    monkeypatch.setattr(opdwatch.dashboards.app, "serve",
                        lambda root, host, port, debug, allow_hosts: calls.append((root, host, port, debug)))
    assert main(["dashboard", str(tmp_path), *argv]) == 0
    assert calls == [(tmp_path.resolve(), *expected)]
    assert f"http://{expected[0]}:{expected[1]}/" in capsys.readouterr().out


def fake_serve(monkeypatch) -> list:  # noqa: ANN001
    import opdwatch.dashboards.app

    calls: list = []
    monkeypatch.setattr(opdwatch.dashboards.app, "serve", lambda root, **kw: calls.append(kw))
    return calls


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "my-box.lan", "2001:db8::1"])
def test_a_non_loopback_host_warns_that_run_texts_become_readable(tmp_path, monkeypatch, capsys, host):
    pytest.importorskip("dash")
    fake_serve(monkeypatch)
    assert main(["dashboard", str(tmp_path), "--host", host]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "warning" in err and host in err
    assert "texts (prompts, rollouts)" in err and "readable from the network" in err


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.5", "[::1]"])
def test_a_loopback_host_does_not_warn(tmp_path, monkeypatch, capsys, host):
    pytest.importorskip("dash")
    fake_serve(monkeypatch)
    assert main(["dashboard", str(tmp_path), "--host", host]) == 0
    assert capsys.readouterr().err == ""


def test_allow_host_is_repeatable_and_reaches_serve(tmp_path, monkeypatch):
    pytest.importorskip("dash")
    calls = fake_serve(monkeypatch)
    assert main(["dashboard", str(tmp_path), "--allow-host", "dash.example.org", "--allow-host", "10.0.0.5"]) == 0
    assert calls[0]["allow_hosts"] == ["dash.example.org", "10.0.0.5"]
    assert main(["dashboard", str(tmp_path)]) == 0
    assert calls[1]["allow_hosts"] == []


@pytest.mark.parametrize("value", ["evil example", "a/b", "x:99999", "http://x"])
def test_a_bad_allow_host_is_a_one_line_error(tmp_path, capsys, value):
    assert main(["dashboard", str(tmp_path), "--allow-host", value]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--allow-host" in err


def test_served_app_answers_the_allowed_hosts_only(tmp_path, monkeypatch):
    """CLI options down to a real HTTP request: the app that `opdwatch dashboard` would run, on a loopback
    socket, answers its --host and --allow-host names and refuses others with 400."""
    pytest.importorskip("dash")
    import dash

    from tests.dashboards.served import get, serve

    answers: dict[str, int] = {}

    def run(app, host, port, debug):  # noqa: ANN001, ANN202 - instead of dash.Dash.run
        with serve(app) as base:
            for name in ("dash.example.org", "my-box.lan:8050", "localhost", "evil.example", "0.0.0.0"):
                answers[name] = get(base, "/", host=name)[0]

    monkeypatch.setattr(dash.Dash, "run", run)
    assert main(["dashboard", str(tmp_path), "--host", "my-box.lan", "--allow-host", "dash.example.org"]) == 0
    assert answers == {"dash.example.org": 200, "my-box.lan:8050": 200, "localhost": 200, "evil.example": 400,
                       "0.0.0.0": 400}


def test_importing_opdwatch_and_the_cli_does_not_import_dash():
    code = ("import sys, opdwatch, opdwatch.cli, opdwatch.live, opdwatch.cli.dashboard, opdwatch.dashboards; "
            "opdwatch.cli.build_parser(); print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('dash', 'flask', 'torch')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_create_app_reads_no_run_at_start(tmp_path):
    pytest.importorskip("dash")
    from opdwatch.dashboards.app import create_app

    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "manifest.json").write_text("{not json")  # would raise if anything read it
    app = create_app(tmp_path)
    assert app.server.extensions["opdwatch"].root == tmp_path.resolve()
