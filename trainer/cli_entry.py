"""What `opdwatch train` and `opdwatch demo` call. Errors the user can fix raise `OpdwatchError` (exit 2)."""

from __future__ import annotations

from pathlib import Path

from opdwatch.trainer.config import load_config
from opdwatch.trainer.loop.loop import train


def train_main(config_path: str, overrides: list[str], resume: bool, *, overwrite: bool = False) -> Path:
    """`opdwatch train CONFIG [key=value ...] [--resume | --overwrite]`: returns the run directory."""
    config = load_config(config_path, overrides)  # validated before any model loads
    return train(config, resume=resume, overwrite=overwrite)


def demo_main(**kwargs) -> tuple[Path, Path]:
    """`opdwatch demo [--output-dir D] [--seed N] [--threads N] [--steps N] [--cache-dir D] [key=value]`: the
    keyword arguments of `recipes.demo.demo.run_demo`. Imported here, not at the top: `opdwatch train` with real
    models must not import the demo recipe."""
    from opdwatch.trainer.recipes.demo.demo import run_demo

    return run_demo(**kwargs)
