"""`opdwatch demo`: plain OPD and Stable-OPD on the embedded tiny task, from the same seed.

Prepares (or loads from the cache) the demo teacher and student, runs `demo_opd.yaml` then
`demo_stable_opd.yaml`, and prints where the runs are. Expected: plain OPD's truncation and repetition jump
(>= 0.5) within ~50 steps, Stable-OPD's stay low.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from opdwatch.terminal import console as make_console
from opdwatch.terminal import shown
from opdwatch.trainer.config import TrainConfig, load_config
from opdwatch.trainer.loop.loop import train
from opdwatch.trainer.recipes.demo.demo_teacher import ensure_demo_model

CONFIG_DIR = Path(__file__).parent / "configs"
PRESETS = ("demo_opd", "demo_stable_opd")


def demo_configs(
    *,
    output_dir: Path,
    seed: int,
    threads: int,
    steps: int | None,
    cache_dir: str | None,
    overrides: list[str],
) -> list[TrainConfig]:
    common = [f"run.output_dir={output_dir}", f"run.seed={seed}", f"run.threads={threads}"]
    common += [f"opd.steps={steps}"] if steps is not None else []
    common += [f"models.cache_dir={cache_dir}"] if cache_dir else []
    return [
        load_config(CONFIG_DIR / f"{name}.yaml", [*common, f"run.name={name}-seed{seed}", *overrides])
        for name in PRESETS
    ]


def run_demo(
    *,
    output_dir: str | None = None,
    seed: int = 0,
    threads: int = 2,
    steps: int | None = None,
    cache_dir: str | None = None,
    overrides: list[str] | None = None,
    console: Console | None = None,
) -> tuple[Path, Path]:
    """Run the demo pair; returns (plain OPD run dir, Stable-OPD run dir)."""
    console = console or make_console()
    out = Path(output_dir) if output_dir else Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    configs = demo_configs(
        output_dir=out,
        seed=seed,
        threads=threads,
        steps=steps,
        cache_dir=cache_dir,
        overrides=list(overrides or []),
    )  # validated before any model is trained
    t0 = time.perf_counter()
    for role in ("teacher", "student"):
        console.print(f"[bold]demo {role}[/]: preparing (cached after the first run)")
        path = ensure_demo_model(configs[0], role)
        console.print(f"  {shown(path)}", soft_wrap=True)  # paths and names are data, not rich markup
    runs = []
    for config in configs:
        console.print(
            f"[bold]{shown(config.run.name)}[/]: beta={config.opd.beta:g} alpha={config.opd.alpha:g}, "
            f"{config.opd.steps} steps"
        )
        runs.append(train(config))
    a, b = shown(runs[0]), shown(runs[1])
    console.print(f"\nDone in {time.perf_counter() - t0:.0f} s. Runs:\n  {a}\n  {b}", soft_wrap=True)
    console.print(f"Compare them with:\n  opdwatch analyze {a} {b}", soft_wrap=True)  # copy-pastable
    return runs[0], runs[1]
