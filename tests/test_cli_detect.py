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


def test_detect_says_when_the_run_is_too_short_or_collapsed_in_warmup(tmp_path, capsys):
    short = write_synthetic_run(tmp_path / "short", steps=1, onset=None, seed=1)
    assert main(["detect", str(short), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["too_short"] is True and data["collapsed_in_warmup"] is False and data["steps"] == 1
    assert data["note"].startswith("too short for a verdict: 1 train step,")
    assert main(["detect", str(short)]) == 0
    out = capsys.readouterr().out
    assert "replayed 1 train step (" in out and "too short for a verdict" in out and "1 steps" not in out

    early = write_synthetic_run(tmp_path / "early", steps=12, onset=1, width=0.3, seed=2)
    assert main(["detect", str(early), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["collapsed_in_warmup"] is True and data["too_short"] is False
    assert "warm-up" in data["note"]


def test_detect_json_has_no_note_for_a_judged_run(run_dir, capsys):
    assert main(["detect", str(run_dir), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["too_short"] is False and data["collapsed_in_warmup"] is False and data["note"] is None


def test_plural():
    from opdwatch.detector.replay import plural

    assert [plural(n, "step") for n in (0, 1, 2)] == ["0 steps", "1 step", "2 steps"]
