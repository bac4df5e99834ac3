"""The demo entry point runs both presets from one seed and prints the analyze command (tiny overrides)."""

from __future__ import annotations

import io

from rich.console import Console

from opdwatch import open_run
from opdwatch.trainer.cli_entry import demo_main
from opdwatch.trainer.recipes.demo.demo import run_demo

from .conftest import TINY

TINY_NO_BETA = [o for o in TINY if not o.startswith(("opd.beta", "opd.alpha"))]  # keep the presets' values


def test_run_demo_pair(tmp_path, model_cache) -> None:
    out = io.StringIO()
    plain, stable = run_demo(output_dir=str(tmp_path / "demo"), seed=1, threads=1, steps=2,
                             cache_dir=str(model_cache), overrides=[*TINY_NO_BETA, "val.every=0"],
                             console=Console(file=out, width=200))
    assert plain.name == "demo_opd-seed1" and stable.name == "demo_stable_opd-seed1"
    for run_dir, beta in ((plain, 0.0), (stable, 0.2)):
        manifest = open_run(run_dir).manifest
        manifest = manifest() if callable(manifest) else manifest
        assert manifest["status"] == "finished"
        assert manifest["config"]["opd"]["beta"] == beta
        assert manifest["config"]["run"]["seed"] == 1
    assert f"opdwatch analyze {plain} {stable}" in out.getvalue()
    assert callable(demo_main)
