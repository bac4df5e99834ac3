"""What `opdwatch train` and `opdwatch demo` call. Errors the user can fix raise `OpdwatchError` (exit 2)."""

from __future__ import annotations

from pathlib import Path

from trainer.config import load_config
from trainer.demo import run_demo
from trainer.loop import train


def train_main(config_path: str, overrides: list[str], resume: bool) -> Path:
    """`opdwatch train CONFIG [key=value ...] [--resume]`: returns the run directory."""
    config = load_config(config_path, overrides)  # validated before any model loads
    return train(config, resume=resume)


def demo_main(
    *,
    output_dir: str | None = None,
    seed: int = 0,
    threads: int = 2,
    steps: int | None = None,
    cache_dir: str | None = None,
    overrides: list[str] | None = None,
) -> tuple[Path, Path]:
    """`opdwatch demo [--output-dir D] [--seed N] [--threads N] [--steps N] [--cache-dir D] [key=value]`."""
    return run_demo(
        output_dir=output_dir,
        seed=seed,
        threads=threads,
        steps=steps,
        cache_dir=cache_dir,
        overrides=overrides,
    )
