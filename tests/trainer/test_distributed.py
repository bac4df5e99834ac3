"""Data parallel over gloo: `torchrun --nproc_per_node 2` matches one process on the same global batch."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import torch
import yaml

import opdwatch
from opdwatch.errors import OpdwatchError
from opdwatch.trainer.config import load_config, parse_overrides
from opdwatch.trainer.loop.checkpoint import list_checkpoints
from opdwatch.trainer.parallel.distributed import DistEnv, global_mean_scale, local_minibatches, shard, shard_bounds
from tests.trainer.conftest import TINY

HERE = Path(__file__).parent


def torchrun(*args: str, nproc: int = 2, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run `torchrun --nproc_per_node nproc <args>` (a script path, or `-m module ...`) and check it succeeded."""
    exe = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if exe is None:
        pytest.skip("torchrun not found")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parents[1])}
    cmd = [exe, "--nproc_per_node", str(nproc), "--master_port", "0", "--rdzv_backend", "c10d",
           "--rdzv_endpoint", "localhost:0", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_shards_are_contiguous_and_even() -> None:
    items = list(range(8))
    assert [shard(items, DistEnv(rank=r, world_size=4)) for r in range(4)] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert shard_bounds(6, DistEnv()) == (0, 6)
    with pytest.raises(OpdwatchError, match="cannot be split evenly"):
        shard_bounds(5, DistEnv(rank=0, world_size=2))
    assert global_mean_scale(17.0, DistEnv()) == 1.0


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    torchrun(str(HERE / "dist_worker.py"), str(out))
    res = json.loads(out.read_text())
    assert res["world"] == 2
    assert res["merged"].keys() == res["single"].keys()
    for key, value in res["single"].items():
        got = res["merged"][key]
        assert (math.isnan(got) and math.isnan(value)) or got == pytest.approx(value, rel=1e-12, abs=1e-12), key
    assert res["skip"] is True  # rank 1's flag reached rank 0
    assert res["grad_norm"] == pytest.approx(res["ref_grad_norm"], rel=1e-12)
    for got, want in zip(res["weights"], res["ref_weights"]):
        assert got == pytest.approx(want, rel=1e-10, abs=1e-12)


def test_each_minibatch_is_split_over_the_ranks() -> None:
    # 8 prompts, 2 minibatches (0-3, 4-7), 2 ranks: rank 0 gets [0, 1] and [4, 5]
    assert local_minibatches(8, 2, DistEnv(rank=0, world_size=2)) == [[0, 1], [4, 5]]
    assert local_minibatches(8, 2, DistEnv(rank=1, world_size=2)) == [[2, 3], [6, 7]]
    assert local_minibatches(8, 2, DistEnv()) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert local_minibatches(5, 2, DistEnv()) == [c.tolist() for c in torch.arange(5).chunk(2)]
    with pytest.raises(OpdwatchError, match="cannot be split"):
        local_minibatches(6, 2, DistEnv(rank=0, world_size=2))


def _tiny_yaml(path: Path, model_cache: Path) -> Path:
    """The tiny test config as a YAML file (both runs load the same file), with per-rollout random streams."""
    tree = parse_overrides([*TINY, f"models.cache_dir={model_cache}", "opd.steps=3", "val.every=2", "run.seed=3",
                            "checkpoint.every=0", "rollout.counter_rng=true", "run.name=r"])
    path.write_text(yaml.safe_dump(tree))
    return path


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> tuple[Path, Path]:
    """(config file, run dir) of the one-process reference run the torchrun runs are compared with."""
    from opdwatch.trainer.loop.loop import train

    root = tmp_path_factory.mktemp("dist")
    config_path = _tiny_yaml(root / "tiny.yaml", model_cache)
    run_dir = train(load_config(config_path, [f"run.output_dir={root / 'one'}"]))
    return config_path, run_dir


@pytest.mark.slow
def test_torchrun_training_matches_one_process(tmp_path: Path, one_process: tuple[Path, Path]) -> None:
    """`torchrun --nproc_per_node 2` (gloo) records the same rollouts, tokens and step metrics and ends with the
    same weights as one process on the same global batch (4 prompts x 2 samples, 2 minibatches, 3 steps)."""
    config_path, one_dir = one_process
    torchrun("-m", "opdwatch.cli", "train", str(config_path), f"run.output_dir={tmp_path}")
    assert_same_run(one_dir, tmp_path / "r")


@pytest.mark.slow
def test_fsdp_training_matches_one_process(tmp_path: Path, one_process: tuple[Path, Path]) -> None:
    """The same with the student sharded by FSDP2 over 2 gloo ranks: rollouts come from the unsharded copy,
    gradients are reduce-scattered as sums, and the checkpoint holds full tensors and name-keyed Adam state; here
    the run is also interrupted after step 2 and resumed from that checkpoint."""
    config_path, one_dir = one_process
    args = ("-m", "opdwatch.cli", "train", str(config_path), f"run.output_dir={tmp_path}", "distributed.fsdp=true")
    torchrun(*args, "opd.steps=2")  # stop after step 2 (a checkpoint), then resume under FSDP to step 3
    ckpt = torch.load(list_checkpoints(tmp_path / "r")[-1] / "state.pt", weights_only=False)
    assert ckpt["step"] == 2 and ckpt["optimizer_keys"] == "names"
    assert set(ckpt["optimizer"]["state"]) == set(ckpt["student"])  # Adam moments for every weight, by name
    torchrun(*args, "--resume")
    assert_same_run(one_dir, tmp_path / "r")


def assert_same_run(one_dir: Path, two_dir: Path) -> None:
    one, two = opdwatch.open_run(one_dir), opdwatch.open_run(two_dir)
    assert two.manifest["world_size"] == 2 and two.status == "finished"

    # rollouts: same prompts, samples, texts and finish reasons; rank 1 holds half of the train rollouts
    keys = ["phase", "step", "prompt_id", "sample_index"]
    r1, r2 = (r.rollouts().collect().sort(keys) for r in (one, two))
    assert sorted(r2.filter(pl.col("phase") == "train")["rank"].unique().to_list()) == [0, 1]
    assert r1.height == r2.height
    for col in ("prompt_id", "sample_index", "num_tokens", "finish_reason", "text", "truncated", "correct"):
        assert r1[col].to_list() == r2[col].to_list(), col
    for col in ("student_logp_mean", "teacher_logp_mean", "advantage_mean"):
        assert r1[col].to_numpy() == pytest.approx(r2[col].to_numpy(), rel=1e-4, abs=1e-5, nan_ok=True), col

    # tokens, matched through their rollout's (step, prompt, sample)
    def tokens(run) -> pl.DataFrame:
        ids = run.rollouts().filter(pl.col("phase") == "train").select("step", "rank", "rollout", "prompt_id",
                                                                        "sample_index")
        return run.tokens().join(ids, on=["step", "rank", "rollout"]).collect().sort(
            ["step", "prompt_id", "sample_index", "position"])

    t1, t2 = tokens(one), tokens(two)
    assert t1.height == t2.height > 0
    assert t1["token_id"].to_list() == t2["token_id"].to_list()
    for col in ("student_logp", "teacher_logp", "ref_logp", "advantage"):
        assert t1[col].to_numpy() == pytest.approx(t2[col].to_numpy(), rel=1e-4, abs=1e-5), col

    # step metrics (rank 0 wrote the global ones), timings aside
    s1, s2 = (r.steps().collect().sort(["phase", "step"]) for r in (one, two))
    assert s1.select("phase", "step").rows() == s2.select("phase", "step").rows()
    metrics = [c for c in s1.columns if "/" in c and not c.startswith("time/")]
    assert {"loss/total", "rollout/truncation_rate", "token/advantage_mean"} <= set(metrics)
    for col in metrics:
        assert s1[col].to_numpy() == pytest.approx(s2[col].to_numpy(), rel=1e-4, abs=1e-5, nan_ok=True), col

    # final weights
    w1, w2 = (torch.load(list_checkpoints(d)[-1] / "state.pt")["student"] for d in (one_dir, two_dir))
    assert w1.keys() == w2.keys()
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-4, atol=1e-5, msg=name)
