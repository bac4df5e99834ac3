"""`opdwatch demo`: the CPU demo — the shipped tiny teacher and student, then plain OPD vs Stable-OPD."""

from __future__ import annotations

import argparse

from opdwatch.cli.train import import_trainer


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output-dir", default=None, help="parent directory of the runs (default runs/demo-<time>)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads (the trajectory depends on it)")
    p.add_argument("--steps", type=int, default=None, help="OPD steps per run (default: the presets')")
    p.add_argument("--cache-dir", default=None, help="demo model cache (default $OPDWATCH_CACHE or ~/.cache/opdwatch)")
    p.add_argument("--rebuild-models", action="store_true",
                   help="train the demo models from scratch with their recipe (into the cache) instead of using the "
                   "shipped ones")
    p.add_argument("--ablation", action="store_true",
                   help="the ablation preset instead: plain OPD, + KL, + KL + golden SFT from one seed, larger "
                   "student, lower lr, 250 steps each, sampled and greedy validation (docs/trainer.md)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides applied to every run")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    entry = import_trainer()
    entry.demo_main(output_dir=args.output_dir, seed=args.seed, threads=args.threads, steps=args.steps,
                    cache_dir=args.cache_dir, overrides=list(args.overrides),
                    rebuild_models=args.rebuild_models, ablation=args.ablation)
    return 0
