"""The trainer's in-run probe records probe/... step metrics and never changes the training trajectory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from opdwatch.probe.summary import DELTA_SUFFIX, HEADLINE_KEYS, LOOP_INCENTIVE, STUDENT_LOOP_LOGP, family_key
from opdwatch.reader import open_run
from opdwatch.trainer.config import TrainConfig, load_config
from opdwatch.trainer.data.models import save_model_dir
from opdwatch.trainer.loop.checkpoint import list_checkpoints
from opdwatch.trainer.loop.loop import train
from opdwatch.trainer.loop.probe import PROBE_TIME
from opdwatch.trainer.recipes.demo.tokenizer import build_char_tokenizer
from tests.test_probe_scoring import tiny_model
from tests.trainer.conftest import TINY


def _config(tmp_path: Path, name: str, *extra: str) -> TrainConfig:
    # random tiny models saved here (no recipe build: it dominated the test's time)
    models = []
    for role, seed in (("student", 1), ("teacher", 2)):
        path = tmp_path / role
        if not path.exists():
            tok = build_char_tokenizer()
            save_model_dir(tiny_model(len(tok), seed=seed), tok, path)
        models.append(f"models.{role}={path}")
    return load_config(None, [*TINY, *models, f"run.output_dir={tmp_path}",
                              f"run.name={name}", "opd.steps=2", "val.every=0", "checkpoint.every=0",
                              "opd.beta=0", "opd.alpha=0", "opd.lr=1e-2", *extra])


def _run(tmp_path: Path, name: str, *extra: str) -> Path:
    return train(_config(tmp_path, name, *extra))


def test_in_run_probe_leaves_the_weights_identical(tmp_path: Path) -> None:
    plain = _run(tmp_path, "plain")
    probed = _run(tmp_path, "probed", "probe.every=1", "probe.num_prompts=4", "probe.copies=3",
                  "probe.batch_size=3", "probe.middle=true")
    a = torch.load(list_checkpoints(plain)[-1] / "state.pt", weights_only=False)
    b = torch.load(list_checkpoints(probed)[-1] / "state.pt", weights_only=False)
    assert a["student"].keys() == b["student"].keys()
    for key in a["student"]:
        assert torch.equal(a["student"][key], b["student"][key]), key
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"]) and torch.equal(a["rng"]["sampler"], b["rng"]["sampler"])
    steps = open_run(probed).steps("train").collect().sort("step")
    for key in HEADLINE_KEYS:
        assert steps[key].is_not_null().all() and steps[key + DELTA_SUFFIX].is_not_null().all(), key
    assert (steps[PROBE_TIME] > 0).all()
    # probe.middle: the mid-solution loops' family beside the end-of-solution one, on other sequences
    for key in HEADLINE_KEYS:
        mid_key = family_key(key, "middle")
        assert steps[mid_key].is_not_null().all() and steps[mid_key + DELTA_SUFFIX].is_not_null().all(), mid_key
    assert steps[family_key(STUDENT_LOOP_LOGP, "middle")][0] != steps[STUDENT_LOOP_LOGP][0]
    # the student moved (lr 1e-2), so its loop propensity moved away from step 0's
    assert abs(steps[STUDENT_LOOP_LOGP + DELTA_SUFFIX][-1]) > 0
    assert LOOP_INCENTIVE not in open_run(plain).steps("train").collect().columns
    # the rollouts were the same too: same lengths at every step
    ra, rb = (open_run(p).rollouts().collect().sort("step", "rollout")["num_tokens"].to_list() for p in (plain, probed))
    assert ra == rb


def test_probe_config_is_validated() -> None:
    with pytest.raises(Exception, match="probe.chunk"):
        load_config(None, ["probe.chunk=paragraph"])
