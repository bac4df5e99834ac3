import json

import pytest

from opdwatch.cli import main
from opdwatch.detector.synthetic_run import write_synthetic_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return write_synthetic_run(tmp_path_factory.mktemp("cli") / "run", steps=45, onset=34, seed=5)


def test_detect_prints_warning_alarm_and_lead_time(run_dir, capsys):
    assert main(["detect", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "first warning: step" in out and "collapse (truncation >= 0.5): step" in out
    assert "lead time:" in out and "warm-up" in out


def test_detect_json_and_settings_overrides(run_dir, capsys):
    assert main(["detect", str(run_dir), "--json"]) == 0
    default = json.loads(capsys.readouterr().out)
    assert default["collapse_step"] is not None and default["first_warning"] < default["collapse_step"]
    assert default["lead_time"] == default["collapse_step"] - default["warning_before_collapse"]
    assert default["transitions"][0]["evidence"]
    assert main(["detect", str(run_dir), "--json", "--set", "h=50", "--set", "cap_factor=1",
                 "--policy", "cooldown_steps=1"]) == 0
    deaf = json.loads(capsys.readouterr().out)
    assert deaf["first_warning"] is None or deaf["first_warning"] > default["first_warning"]


@pytest.mark.parametrize("argv", [
    ["detect", "/nonexistent/run"],
    ["detect", "RUN", "--set", "h"],
    ["detect", "RUN", "--set", "bogus=1"],
    ["detect", "RUN", "--set", "h=abc"],
    ["detect", "EMPTY"],
    ["detect", "NOTARUN"],
])
def test_detect_bad_input_exits_2_with_one_line(argv, run_dir, tmp_path, capsys):
    from opdwatch.recorder import Recorder

    Recorder.create(tmp_path / "empty").close()
    (tmp_path / "notarun").mkdir()
    argv = [{"RUN": str(run_dir), "EMPTY": str(tmp_path / "empty"), "NOTARUN": str(tmp_path / "notarun")}.get(a, a)
            for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("opdwatch: error: ") and err.count("\n") == 1
