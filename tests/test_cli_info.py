"""`opdwatch --help/--version/info`: output and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from opdwatch import __version__
from opdwatch.cli import main
from tests.test_reader import small_run


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and __version__ in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0 and "info" in capsys.readouterr().out


def test_info_table_and_json(tmp_path, capsys):
    path = small_run(tmp_path / "r")
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "finished" in out and "rollout truncation rate" in out and "0.5" in out
    assert main(["info", str(path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 3 and summary["last_step"] == 2
    assert summary["last_train"]["rollout/truncation_rate"] == 0.5
    assert summary["last_train"]["token/advantage_mean"] == pytest.approx(1.0)


@pytest.mark.parametrize("make", ["missing", "not_run", "bad_version", "corrupt", "usage"])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, make):
    path = tmp_path / "r"
    if make == "not_run":
        path.mkdir()
    elif make in ("bad_version", "corrupt"):
        small_run(path)
        text = '{"format": "opdwatch-run", "format_version": 7}' if make == "bad_version" else "{oops"
        (path / "manifest.json").write_text(text)
    argv = ["info"] if make == "usage" else ["info", str(path)]
    code = None
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "error" in err and "Traceback" not in err


def test_console_script_runs_without_traceback(tmp_path):
    out = subprocess.run([sys.executable, "-m", "opdwatch.cli", "info", str(tmp_path / "nope")],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip() == f"opdwatch: error: {tmp_path / 'nope'}: no such directory"
