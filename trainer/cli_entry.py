"""What `opdwatch train` and `opdwatch demo` call. Errors the user can fix raise `OpdwatchError` (exit 2)."""

from __future__ import annotations

from pathlib import Path

from trainer.config import load_config
from trainer.demo import run_demo
from trainer.loop import train


def train_main(config_path: str, overrides: list[str], resume: bool, *, overwrite: bool = False) -> Path:
    """`opdwatch train CONFIG [key=value ...] [--resume | --overwrite]`: returns the run directory."""
    config = load_config(config_path, overrides)  # validated before any model loads
    return train(config, resume=resume, overwrite=overwrite)


# `opdwatch demo [--output-dir D] [--seed N] [--threads N] [--steps N] [--cache-dir D] [key=value]`
demo_main = run_demo
