"""TRL after the fact: a real DistillationTrainer run (tests/trl_tiny.py) writes its own trainer_state.json and
log_completions Parquet; the import reads both and round-trips into analyze and detect."""

from __future__ import annotations

import pytest

from opdwatch.metric_defs import MEAN_LENGTH, REPETITION_RATE, TRUNCATION_RATE
from opdwatch.reader import open_run
from tests.fixtures.frameworks.check import analyze, detect, run_import

pytest.importorskip("trl")  # the trl extra; CI installs it with '.[all]'


@pytest.fixture(scope="module")
def trl_output(tmp_path_factory):
    from tests.trl_tiny import make_trainer, torch_threads

    out = tmp_path_factory.mktemp("trl") / "out"
    with torch_threads(1):
        make_trainer("distillation", out, max_steps=3, log_completions=True, save_steps=3).train()
    return out


def test_trainer_state_and_completions(trl_output, tmp_path, capsys):
    assert (trl_output / "checkpoint-3" / "trainer_state.json").is_file()
    assert sorted(p.name for p in (trl_output / "completions").glob("*.parquet"))
    report = run_import(capsys, "trl", trl_output, tmp_path / "run")
    assert report["framework"] == "trl" and report["steps"] == 3
    assert report["from_framework"][TRUNCATION_RATE] == "completions/clipped_ratio"
    assert report["from_framework"][MEAN_LENGTH] == "completions/mean_length"
    assert REPETITION_RATE in report["recomputed"]  # from the completion texts
    steps = open_run(tmp_path / "run").steps().collect().sort("step")
    assert steps["step"].to_list() == [1, 2, 3]
    assert steps[TRUNCATION_RATE].to_list() == steps["trl/completions/clipped_ratio"].to_list()
    assert steps["trl/loss"].null_count() == 0
    summary = analyze(capsys, tmp_path / "run")
    assert summary["steps"] == 3 and summary["truncation_unknown"] == 0
    assert detect(capsys, tmp_path / "run")["steps"] == 3
