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
    import dashboards.app

    calls = []
    monkeypatch.setattr(dashboards.app, "serve",
                        lambda root, host, port, debug: calls.append((root, host, port, debug)))
    assert main(["dashboard", str(tmp_path), *argv]) == 0
    assert calls == [(tmp_path.resolve(), *expected)]
    assert f"http://{expected[0]}:{expected[1]}/" in capsys.readouterr().out


def test_importing_opdwatch_and_the_cli_does_not_import_dash():
    code = ("import sys, opdwatch, opdwatch.cli, opdwatch.live, opdwatch.cli.dashboard, dashboards; "
            "opdwatch.cli.build_parser(); print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('dash', 'flask', 'torch')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_create_app_reads_no_run_at_start(tmp_path):
    pytest.importorskip("dash")
    from dashboards.app import create_app

    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "manifest.json").write_text("{not json")  # would raise if anything read it
    app = create_app(tmp_path)
    assert app.server.extensions["opdwatch"].root == tmp_path.resolve()
