"""`opdwatch train CONFIG [key=value ...] [--resume | --overwrite]`: run the Stable-OPD trainer (needs the `train`
extra)."""

from __future__ import annotations

import argparse

from opdwatch.config_tree import parse_assignments
from opdwatch.errors import OpdwatchError
from opdwatch.terminal import plain


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", metavar="CONFIG", help="YAML file, or a preset name such as demo_stable_opd")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue the run from its latest checkpoint (from scratch if it stopped before the first)")
    again.add_argument("--overwrite", action="store_true",
                       help="replace a run already recorded under this run.name (its records and checkpoints)")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    parse_assignments(args.overrides)  # a malformed key=value is a one-line error even without the train extra
    entry = import_trainer()
    run_dir = entry.train_main(args.config, list(args.overrides), args.resume, overwrite=args.overwrite)
    print(f"run written to {plain(run_dir)}\nanalyse it with: opdwatch analyze {plain(run_dir)}")
    return 0


def import_trainer():  # noqa: ANN201 - module object
    """The trainer entry points, or one clear line when the `train` extra is missing."""
    try:
        import opdwatch.trainer.cli_entry as entry
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in ("torch", "transformers", "math_verify", "tokenizers", "tqdm"):
            raise OpdwatchError(f"the trainer needs the 'train' extra ({exc.name} is missing): "
                                "pip install torch==2.13.0 'opdwatch[train]'") from None
        raise
    return entry
