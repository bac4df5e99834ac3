"""`opdwatch demo`: plain OPD and Stable-OPD on the embedded tiny task, from the same seed.

Loads the demo teacher and student (shipped with the package, or from the cache; trained from scratch with
`rebuild_models`), runs `demo_opd.yaml` then
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
from opdwatch.trainer.recipes.demo.demo_teacher import DEMO_ROLES, ensure_demo_model, rebuild_demo_models

CONFIG_DIR = Path(__file__).parent / "configs"
PRESETS = ("demo_opd", "demo_stable_opd")
# `opdwatch demo --ablation`: the paper's Table 2 arms (plain OPD, + beta KL, + beta KL + alpha golden SFT), from one
# seed, with a larger student, a lower lr and more steps (configs/ablation_*.yaml; docs/trainer.md)
ABLATION_PRESETS = ("ablation_opd", "ablation_kl", "ablation_stable")


def demo_configs(
    *,
    output_dir: Path,
    seed: int,
    threads: int,
    steps: int | None,
    cache_dir: str | None,
    overrides: list[str],
    presets: tuple[str, ...] = PRESETS,
) -> list[TrainConfig]:
    common = [f"run.output_dir={output_dir}", f"run.seed={seed}", f"run.threads={threads}"]
    common += [f"opd.steps={steps}"] if steps is not None else []
    common += [f"models.cache_dir={cache_dir}"] if cache_dir else []
    return [
        load_config(CONFIG_DIR / f"{name}.yaml", [*common, f"run.name={name}-seed{seed}", *overrides])
        for name in presets
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
    rebuild_models: bool = False,
    ablation: bool = False,
) -> tuple[Path, ...]:
    """Run the demo pair and return (plain OPD run dir, Stable-OPD run dir), or with `ablation` the three arms of
    ABLATION_PRESETS. The demo models come from the cache or the shipped files (verified); `rebuild_models` trains
    them from scratch into the cache first."""
    console = console or make_console()
    out = Path(output_dir) if output_dir else Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    configs = demo_configs(
        output_dir=out,
        seed=seed,
        threads=threads,
        steps=steps,
        cache_dir=cache_dir,
        overrides=list(overrides or []),
        presets=ABLATION_PRESETS if ablation else PRESETS,
    )  # validated before any model is trained
    t0 = time.perf_counter()
    if rebuild_models:
        console.print("[bold]demo models[/]: training from scratch (--rebuild-models)")
        rebuild_demo_models(configs[0], DEMO_ROLES)
    for role in DEMO_ROLES:
        path = ensure_demo_model(configs[0], role)
        console.print(f"[bold]demo {role}[/]: {shown(path)}", soft_wrap=True)  # paths are data, not rich markup
    runs = []
    for config in configs:
        console.print(
            f"[bold]{shown(config.run.name)}[/]: beta={config.opd.beta:g} alpha={config.opd.alpha:g}, "
            f"{config.opd.steps} steps"
        )
        runs.append(train(config))
    names = [shown(r) for r in runs]
    listed = "".join(f"\n  {n}" for n in names)
    console.print(f"\nDone in {time.perf_counter() - t0:.0f} s. Runs:{listed}", soft_wrap=True)
    console.print(f"Compare them with:\n  opdwatch analyze {' '.join(names)}", soft_wrap=True)  # copy-pastable
    return tuple(runs)
