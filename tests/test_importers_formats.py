"""Imports of verl, slime, prime-rl, NeMo-RL and tinker-cookbook files, each round-tripped into analyze/detect.

Fixtures: tests/fixtures/frameworks (built field for field from each framework's writer, source named there);
tinker-cookbook's files come from its own JsonLogger.
"""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from opdwatch.importers import import_run, read_run
from opdwatch.metric_defs import ADVANTAGE_MEAN, TRUNCATION_RATE
from opdwatch.reader import open_run
from tests.fixtures.frameworks import builders
from tests.fixtures.frameworks.check import analyze, detect, run_import
from tests.fixtures.frameworks.trajectory import COLLAPSE_FROM, EOS, STEPS, step_samples, truncation


def _truth() -> dict[int, float]:
    return {s: truncation(step_samples(s)) for s in STEPS}


def test_verl_metrics_and_generations_round_trip_and_padded_width_check(tmp_path, capsys):
    log, gens = builders.verl_files(tmp_path / "verl", padded_width_bug=True)
    report = run_import(capsys, "verl", log, tmp_path / "run", "--rollouts", str(gens), "--max-response-length", "48")
    assert report["framework"] == "verl" and report["steps"] == len(STEPS)
    assert report["from_framework"][TRUNCATION_RATE] == "response_length/clip_ratio"
    # texts only: repetition is ours (zlib tail rule), truncation can only be verl's figure
    assert "rollout/repetition_rate" in report["recomputed"] and TRUNCATION_RATE not in report["recomputed"]
    assert set(report["signals"]) == {"truncation", "repetition", "length"}
    # verl's clip ratio counts the longest response of a healthy batch: flagged against the budget
    assert len(report["findings"]) == 1 and "padded width" in report["findings"][0]
    steps = open_run(tmp_path / "run").steps().collect().sort("step")
    assert steps["verl/actor/entropy"].to_list() == [0.5] * len(STEPS)
    assert "verl/unknown_key" not in steps.columns  # a non-numeric value is no step metric
    summary = analyze(capsys, tmp_path / "run")
    assert summary["steps"] == len(STEPS) and summary["verdict"] == "collapsed"
    assert summary["events"] == {"info": 1}


def test_slime_dumps_recompute_and_show_the_off_by_one_clip_ratio(tmp_path, capsys):
    src = builders.slime_dumps(tmp_path / "dump")
    metrics = builders.slime_metrics_jsonl(tmp_path / "metrics.jsonl", off_by_one=True)
    report = run_import(capsys, "slime", src, tmp_path / "run", "--metrics", str(metrics))
    assert report["rollouts"] == len(STEPS) * 8 and report["tokens"] > 0
    assert set(report["signals"]) >= {"truncation", "loop", "adv_gap", "eos_adv", "teacher_logp"}
    by_key = {d["framework_key"]: d for d in report["disagreements"]}
    bug = by_key["multi_turn/raw_response_length/response_length_clip_ratio"]
    truth = _truth()
    collapsed = [s for s in STEPS if truth[s] > 0]
    assert bug["metric"] == TRUNCATION_RATE and bug["steps"] == collapsed and set(bug["theirs"]) == {0.0}
    assert bug["ours"] == [truth[s] for s in collapsed] and "#203" in bug["note"]
    assert "rollout/truncated_ratio" not in by_key  # slime's per-sample status agrees with ours
    run = open_run(tmp_path / "run")
    steps = run.steps().collect().sort("step")
    assert steps[TRUNCATION_RATE].to_list() == [truth[s] for s in STEPS]
    # both figures are in the run: ours and slime's own, under slime/
    assert steps["slime/multi_turn/raw_response_length/response_length_clip_ratio"].to_list() == [0.0] * len(STEPS)
    # advantage recomputed from the dumped log-probs: teacher - rollout, token mean (float32 storage)
    first = step_samples(STEPS[0])
    expected = np.concatenate([s.teacher - s.student for s in first]).mean()
    assert steps[ADVANTAGE_MEAN][0] == pytest.approx(expected, abs=1e-5)
    events = run.events()
    assert any("#203" in m for m in events["message"].to_list())
    summary = analyze(capsys, tmp_path / "run")
    assert summary["collapse_step"] == min(s for s in STEPS if truth[s] >= 0.5)
    assert summary["token_series"].startswith("token series")
    replay = detect(capsys, tmp_path / "run")
    assert replay["first_alarm"] is not None and replay["first_alarm"] <= summary["collapse_step"]


def test_slime_status_against_tokens_with_eos(tmp_path, capsys):
    import torch

    src = builders.slime_dumps(tmp_path / "dump")
    path = src / "rollout_data" / "1.pt"
    data = torch.load(path, weights_only=True)
    data["samples"][0]["tokens"] = data["samples"][0]["tokens"][:-1]  # drop the EOS: ran out, status still says
    data["samples"][0]["response_length"] -= 1                       # "completed" (a status that lies)
    torch.save(data, path)
    report = run_import(capsys, "slime", src, tmp_path / "run", "--metrics",
                        str(builders.slime_metrics_jsonl(tmp_path / "m.jsonl", off_by_one=False)),
                        "--eos-token-id", str(EOS))
    wrong = {d["framework_key"]: d for d in report["disagreements"]}["rollout/truncated_ratio"]
    assert wrong["steps"] == [1] and wrong["ours"] == [1 / 8] and wrong["theirs"] == [0.0]


def test_slime_in_process_hook_records_through_the_recorder(tmp_path, capsys):
    from opdwatch.importers import slime_hook

    class Args:  # slime's argparse namespace; the hook reads only opdwatch_run_dir from it
        opdwatch_run_dir = str(tmp_path / "live")

    class SampleObj:  # slime.utils.types.Sample: the hook calls its to_dict()
        def __init__(self, d):
            self.d = d

        def to_dict(self):
            return self.d

    for step in STEPS:
        samples = [SampleObj(builders.slime_sample(s, i)) for i, s in enumerate(step_samples(step))]
        assert slime_hook.log_rollout(step, Args(), samples, {"rollout/custom": 1.0}, 2.5) is False
    slime_hook.close()
    steps = open_run(tmp_path / "live").steps().collect().sort("step")
    assert steps[TRUNCATION_RATE].to_list() == [truncation(step_samples(s)) for s in STEPS]
    assert steps["slime/rollout/custom"].to_list() == [1.0] * len(STEPS)
    assert analyze(capsys, tmp_path / "live")["verdict"].startswith("collapsed")
    # slime restarted from a checkpoint at rollout 4: the run resumes there, the later steps are recorded anew
    samples = [SampleObj(builders.slime_sample(s, i)) for i, s in enumerate(step_samples(4))]
    slime_hook.log_rollout(4, Args(), samples)
    slime_hook.close()
    assert sorted(open_run(tmp_path / "live").steps().collect()["step"].to_list()) == [1, 2, 3, 4]


def test_prime_rl_traces_and_metrics(tmp_path, capsys):
    src = builders.prime_rl_dir(tmp_path / "out")
    report = run_import(capsys, "prime-rl", src, tmp_path / "run")
    assert report["rollouts"] == len(STEPS) * 8 and report["disagreements"] == []
    assert "teacher_logp" in report["signals"]
    tokens = open_run(tmp_path / "run").tokens().filter(pl.col("step") == COLLAPSE_FROM).collect()
    samples = step_samples(COLLAPSE_FROM)
    # the scaffold tokens (mask False) are not response tokens; the reference log-probs are the teacher's
    assert tokens.height == sum(len(s.ids) for s in samples)
    assert tokens["teacher_logp"].to_numpy() == pytest.approx(np.concatenate([s.teacher for s in samples]), abs=1e-6)
    assert analyze(capsys, tmp_path / "run")["collapse_step"] is not None


@pytest.mark.parametrize("tokens", [False, True])
def test_nemo_rl_train_data(tmp_path, capsys, tokens):
    src = builders.nemo_rl_dir(tmp_path / "logs", grpo_tokens=tokens)
    extra = ["--metrics", str(src / "metrics.jsonl"), *(["--eos-token-id", str(EOS)] if tokens else [])]
    report = run_import(capsys, "nemo-rl", src, tmp_path / "run", *extra)
    assert report["steps"] == len(STEPS)
    if tokens:  # truncation recomputed from the tokens (no EOS at the end), and it agrees with NeMo-RL's
        assert TRUNCATION_RATE in report["recomputed"] and report["disagreements"] == []
        assert report["tokens"] == sum(len(s.ids) for st in STEPS for s in step_samples(st))
    else:
        assert report["from_framework"][TRUNCATION_RATE] == "train/truncation_rate"
    assert analyze(capsys, tmp_path / "run")["verdict"].startswith("collapsed")


def test_tinker_cookbook_own_logger(tmp_path, capsys):
    from tinker_cookbook.utils import ml_log  # installed by .ci/run (pip install --no-deps tinker-cookbook chz)

    logger = ml_log.JsonLogger(tmp_path / "log")
    logger.log_hparams({"learning_rate": 1e-4})
    for step in range(6):
        logger.log_metrics({"teacher_kl": 0.5 - 0.05 * step, "env/all/ac_tokens_per_turn": 20.0 + step,
                            "optim/lr": 1e-4, "env/all/reward/total": 0.0}, step=step)
    report = run_import(capsys, "tinker", tmp_path / "log", tmp_path / "run")
    assert report["signals"] == ["length"] and report["from_framework"][ADVANTAGE_MEAN] == "teacher_kl"
    steps = open_run(tmp_path / "run").steps().collect().sort("step")
    assert steps[ADVANTAGE_MEAN].to_list() == pytest.approx([-(0.5 - 0.05 * s) for s in range(6)])
    summary = analyze(capsys, tmp_path / "run")
    assert summary["verdict_kind"] == "unknown" and summary["steps"] == 6  # no truncation figure in tinker's files


def test_python_api_reads_without_writing(tmp_path):
    log, _ = builders.verl_files(tmp_path / "verl")
    run = read_run("verl", log)
    assert sorted(s for s, _ in run.steps) == list(STEPS) and not (tmp_path / "run").exists()
    report = import_run("verl", log, tmp_path / "run")
    assert json.loads(json.dumps(report.summary()))["steps"] == len(STEPS)


def test_dashboard_live_run_reads_an_import_unchanged(tmp_path, capsys):
    from opdwatch.live import LiveRun
    from opdwatch.series import step_series

    run_import(capsys, "prime-rl", builders.prime_rl_dir(tmp_path / "out"), tmp_path / "run")
    live = LiveRun(tmp_path / "run", root=tmp_path)
    assert live.series().equals(step_series(open_run(tmp_path / "run")))
    rollouts = live.step_rollouts(COLLAPSE_FROM, phase="train")
    assert rollouts.height == 8
    first = rollouts.row(0, named=True)
    tokens = live.rollout_tokens(COLLAPSE_FROM, rank=first["rank"], phase="train", rollout=first["rollout"])
    assert tokens.height == first["num_tokens"] and tokens["advantage"].null_count() == 0
