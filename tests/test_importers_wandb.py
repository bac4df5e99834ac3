"""The offline .wandb reader on real runs written by wandb.init(mode="offline"), framework recognition, and
damaged files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from opdwatch.cli import main
from opdwatch.importers import wandb_records
from opdwatch.importers.metric_map import recognise
from opdwatch.importers.registry import frameworks
from opdwatch.metric_defs import TRUNCATION_RATE
from opdwatch.reader import open_run
from tests.fixtures.frameworks.check import analyze, detect, run_import
from tests.fixtures.frameworks.trajectory import STEPS
from tests.fixtures.frameworks.wandb_runs import ROWS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wandb_runs(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("wandb")
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "tests.fixtures.frameworks.wandb_runs", str(out)], cwd=out, env=env,
                          capture_output=True, text=True, timeout=120, check=True)
    return {k: Path(v) for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}


def _file(folder: Path) -> Path:
    return next(folder.glob("run-*.wandb"))


def test_reader_recovers_every_row_across_blocks(wandb_runs):
    run = wandb_records.read(_file(wandb_runs["trl"]))
    assert run.problem is None and run.producer.startswith("0.31.")
    assert _file(wandb_runs["trl"]).stat().st_size > 2 * wandb_records.BLOCK  # records span block boundaries
    assert [r["train/global_step"] for r in run.rows] == list(range(1, ROWS + 1))
    assert run.rows[-1]["train/completions/clipped_ratio"] == 1.0 and run.config["max_completion_length"] == 48
    big = wandb_records.read(_file(wandb_runs["slime"]))  # a config record of first + middle + last fragments
    assert big.problem is None and big.config["prompt_template"] == "x" * 70_000


def test_trl_names_recognised_and_imported(wandb_runs, tmp_path, capsys):
    report = run_import(capsys, "wandb", wandb_runs["trl"].parent.parent, tmp_path / "run")  # the wandb/ folder's dir
    assert report["framework"] == "trl" and report["matched"].startswith("trl (")
    assert report["from_framework"][TRUNCATION_RATE] == "train/completions/clipped_ratio"
    steps = open_run(tmp_path / "run").steps().collect().sort("step")
    assert steps["step"].to_list() == list(range(1, ROWS + 1)) and "trl/loss" in steps.columns
    summary = analyze(capsys, tmp_path / "run")
    assert summary["steps"] == ROWS and summary["verdict"].startswith("collapsed")
    assert detect(capsys, tmp_path / "run")["first_warning"] is not None


def test_slime_names_recognised_and_its_two_truncation_figures_compared(wandb_runs, tmp_path, capsys):
    report = run_import(capsys, "wandb", wandb_runs["slime"], tmp_path / "run")
    assert report["framework"] == "slime" and "slime (" in report["matched"]
    assert report["steps"] == len(STEPS)  # the train/step rows are on another clock: left out, said so
    assert any("train/step" in f for f in report["findings"])
    (bug,) = report["disagreements"]
    assert bug["framework_key"] == "multi_turn/raw_response_length/response_length_clip_ratio"
    assert bug["against"] == "rollout/truncated_ratio" and set(bug["theirs"]) == {0.0}
    assert analyze(capsys, tmp_path / "run")["collapse_step"] is not None


def test_slime_dumps_with_the_wandb_metrics(wandb_runs, tmp_path, capsys):
    from tests.fixtures.frameworks.builders import slime_dumps

    src = slime_dumps(tmp_path / "dump")
    report = run_import(capsys, "slime", src, tmp_path / "run", "--metrics", str(wandb_runs["slime"]))
    keys = {d["framework_key"] for d in report["disagreements"]}
    assert "multi_turn/raw_response_length/response_length_clip_ratio" in keys
    assert report["rollouts"] == len(STEPS) * 8


def test_recognise_each_framework_by_its_names():
    samples = {
        "verl": ["response_length/clip_ratio", "actor/entropy", "critic/score/mean"],
        "trl": ["train/loss", "train/completions/clipped_ratio", "train/global_step"],
        "slime": ["rollout/truncated_ratio", "rollout/response_len/mean", "train/loss"],
        "prime-rl": ["train/agg/effective/solver/is_truncated/mean", "progress/rollouts"],
        "nemo-rl": ["train/truncation_rate", "train/mean_gen_tokens_per_sample", "train/loss"],
        "tinker": ["teacher_kl", "env/all/ac_tokens_per_turn", "optim/lr"],
    }
    for name, keys in samples.items():
        found, sentence = recognise(keys, frameworks())
        assert found is not None and found.name == name, (name, sentence)
    assert recognise(["loss", "my/metric"], frameworks())[0] is None


def test_file_cut_mid_record_imports_the_whole_records(wandb_runs, tmp_path, capsys):
    data = _file(wandb_runs["trl"]).read_bytes()
    cut = tmp_path / "run-cut.wandb"
    cut.write_bytes(data[: len(data) // 2 + 3])
    run = wandb_records.read(cut)
    assert run.problem.startswith("cut mid-record") and ROWS // 4 < len(run.rows) < ROWS
    assert main(["import", "wandb", str(cut), str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("opdwatch: warning:") and "cut mid-record" in err[0]
    assert len(open_run(tmp_path / "run").steps().collect()) == len(run.rows)


@pytest.mark.parametrize("content", [b"not a wandb file", b":W&B\xe1\xbe\x07rest", b""])
def test_not_a_run_file_exits_2_with_one_line(tmp_path, capsys, content):
    bad = tmp_path / "run-x.wandb"
    bad.write_bytes(content)
    assert main(["import", "wandb", str(bad), str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("opdwatch: error:") and not (tmp_path / "run").exists()


def test_wandb_version_outside_the_checked_range(wandb_runs, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(wandb_records.metadata, "version", lambda name: "0.19.1")
    assert main(["import", "wandb", str(wandb_runs["slime"]), str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "0.19.1" in err[0] and wandb_records.RANGE_TEXT in err[0]
    assert main(["import", "wandb", str(wandb_runs["slime"]), str(tmp_path / "run"), "--any-wandb-version"]) == 0


def test_nemo_rl_reads_the_wandb_run_in_its_log_dir(wandb_runs, tmp_path, capsys):
    import shutil

    from tests.fixtures.frameworks.builders import nemo_rl_dir

    logs = nemo_rl_dir(tmp_path / "logs")
    (logs / "metrics.jsonl").unlink()  # NeMo-RL itself writes no metrics file
    shutil.copytree(wandb_runs["nemo"], logs / "wandb")
    report = run_import(capsys, "nemo-rl", logs, tmp_path / "run")
    assert report["from_framework"][TRUNCATION_RATE] == "train/truncation_rate" and report["steps"] == len(STEPS)
    assert any(f.endswith(".wandb") for f in report["files"])
    assert analyze(capsys, tmp_path / "run")["verdict"].startswith("collapsed")
