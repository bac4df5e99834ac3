"""The demo models' cache: a build runs on a fixed thread count, whatever the caller uses.

CPU float sums can depend on the number of torch threads (a parallel reduction splits the sum), and the cache
key does not include it: the tiny test models built on 1 and on 2 threads differ in their last bits.
"""

from __future__ import annotations

import torch

import opdwatch.trainer.recipes.demo.demo_teacher as demo_teacher


def test_build_runs_on_build_threads_and_restores_the_callers(tmp_path, tiny_config, monkeypatch) -> None:
    seen: list[int] = []
    real_build = demo_teacher.build_demo_model

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real_build(*args, **kwargs)

    monkeypatch.setattr(demo_teacher, "build_demo_model", spy)
    before = torch.get_num_threads()
    try:
        for threads in (1, 3):
            torch.set_num_threads(threads)
            config = tiny_config(f"models.cache_dir={tmp_path / f'cache-{threads}'}")
            path = demo_teacher.ensure_demo_model(config, "student")
            assert (path / "model.safetensors").exists()
            assert torch.get_num_threads() == threads  # the caller's setting is back
    finally:
        torch.set_num_threads(before)
    assert seen == [demo_teacher.BUILD_THREADS, demo_teacher.BUILD_THREADS]
