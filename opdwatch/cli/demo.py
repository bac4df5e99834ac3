"""`opdwatch demo`: the CPU demo — prepare the tiny teacher (cached), then plain OPD vs Stable-OPD."""

from __future__ import annotations

import argparse

from opdwatch.cli.train import import_trainer


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run plain OPD and Stable-OPD on the embedded CPU task, same seed",
                       description="Prepare the demo teacher and student (trained on first use, then cached), "
                       "run plain OPD and Stable-OPD from the same seed, and print where the runs are.")
    p.add_argument("--output-dir", default=None, help="parent directory of the two runs (default runs/demo-<time>)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads (the trajectory depends on it)")
    p.add_argument("--steps", type=int, default=None, help="OPD steps per run (default: the presets')")
    p.add_argument("--cache-dir", default=None, help="demo model cache (default $OPDWATCH_CACHE or ~/.cache/opdwatch)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides applied to both runs")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    entry = import_trainer()
    entry.demo_main(output_dir=args.output_dir, seed=args.seed, threads=args.threads, steps=args.steps,
                    cache_dir=args.cache_dir, overrides=list(args.overrides))
    return 0
