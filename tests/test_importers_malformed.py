"""Damaged framework files: what is readable is imported with one warning line, or the import stops with one
error line and exit 2; never a traceback, never a half-written run directory."""

from __future__ import annotations

import json

import pytest

from opdwatch.cli import main
from opdwatch.reader import open_run
from opdwatch.recorder import Recorder
from tests.fixtures.frameworks import builders
from tests.fixtures.frameworks.trajectory import STEPS


def _one_line(capsys, prefix: str) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith(prefix), err
    assert "Traceback" not in err[0]
    return err[0]


def _leftovers(folder) -> list[str]:
    return [p.name for p in folder.iterdir() if ".import.tmp-" in p.name]


def test_torn_line_unknown_keys_and_missing_steps(tmp_path, capsys):
    log, _ = builders.verl_files(tmp_path / "verl")
    lines = log.read_text().splitlines()
    del lines[3:5]                                                 # steps 4 and 5 never logged
    lines.insert(1, "not json at all")
    lines.append(json.dumps({"data": {"response_length/mean": 1.0}}))  # a row without a step
    lines.append(lines[-2][: len(lines[-2]) // 2])                 # the writer died mid-line
    log.write_text("\n".join(lines))
    assert main(["import", "verl", str(log), str(tmp_path / "run")]) == 0
    warning = _one_line(capsys, "opdwatch: warning:")
    assert "skipped 2 unreadable lines" in warning and "without a step" in warning
    run = open_run(tmp_path / "run")
    steps = run.steps().collect()
    assert sorted(steps["step"].to_list()) == [s for s in STEPS if s not in (4, 5)]
    assert main(["info", str(tmp_path / "run"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["missing_steps"] == 2


def test_torn_trace_line_and_torn_dump(tmp_path, capsys):
    src = builders.prime_rl_dir(tmp_path / "out")
    traces = src / "rollouts" / "step_3" / "train" / "effective" / "traces.jsonl"
    traces.write_text(traces.read_text()[:-200])
    assert main(["import", "prime-rl", str(src), str(tmp_path / "run")]) == 0
    assert "trace lines" in _one_line(capsys, "opdwatch: warning:")
    rollouts = open_run(tmp_path / "run").rollouts().collect()
    assert rollouts.filter(rollouts["step"] == 3).height == 7  # the torn eighth episode is left out

    dump = builders.slime_dumps(tmp_path / "dump")
    pt = dump / "rollout_data" / "2.pt"
    pt.write_bytes(pt.read_bytes()[:100])
    assert main(["import", "slime", str(dump), str(tmp_path / "run2")]) == 0
    assert "skipped 1 unreadable dumps (2.pt)" in _one_line(capsys, "opdwatch: warning:")
    assert sorted(open_run(tmp_path / "run2").steps().collect()["step"].to_list()) == [s for s in STEPS if s != 2]


@pytest.mark.parametrize("case", ["nothing_readable", "no_numbers", "no_such_src", "run_dir_taken", "unknown_format",
                                  "not_a_trainer_state", "pickle_objects"])
def test_unusable_input_exits_2_with_one_line(tmp_path, capsys, case):
    target = tmp_path / "run"
    fmt, src = "verl", tmp_path / "src.jsonl"
    if case == "nothing_readable":
        src.write_text("garbage\n{\"step\": \"x\"}\n")
    elif case == "no_numbers":
        src.write_text("{\"step\": 1, \"data\": {\"note\": \"text\"}}\n{\"step\": 2, \"data\": []}\n")
    elif case == "run_dir_taken":
        src, _ = builders.verl_files(tmp_path / "verl")
        target.mkdir()
        (target / "keep.txt").write_text("user data")
    elif case == "unknown_format":
        fmt = "megatron"
    elif case == "not_a_trainer_state":
        fmt = "trl"
        src.write_text("{\"log_history\": 3}")
    elif case == "pickle_objects":
        import torch

        fmt, src = "slime", tmp_path / "0.pt"
        from fractions import Fraction  # a class torch's weights_only loader does not allow

        torch.save({"rollout_id": 0, "samples": [{"reward": Fraction(1, 3)}]}, src)
    try:
        code = main(["import", fmt, str(src), str(target)])
    except SystemExit as exc:  # argparse's usage errors exit from the parser
        code = exc.code
    assert code == 2
    line = _one_line(capsys, "opdwatch")
    assert "error" in line
    if case == "run_dir_taken":
        assert (target / "keep.txt").read_text() == "user data"
    else:
        assert not target.exists()
    assert _leftovers(tmp_path) == []
    if case == "pickle_objects":
        assert "--allow-pickle" in line


def test_a_failure_mid_import_leaves_no_run_directory(tmp_path, capsys, monkeypatch):
    log, _ = builders.verl_files(tmp_path / "verl")
    calls = []
    real = Recorder.log_metrics

    def failing(self, step, phase, metrics):
        calls.append(step)
        if len(calls) == 3:
            raise OSError(28, "No space left on device", str(self.run_dir))
        return real(self, step, phase, metrics)

    monkeypatch.setattr(Recorder, "log_metrics", failing)
    assert main(["import", "verl", str(log), str(tmp_path / "run")]) == 2
    assert "no space left" in _one_line(capsys, "opdwatch: error:").lower()
    assert not (tmp_path / "run").exists() and _leftovers(tmp_path) == []
