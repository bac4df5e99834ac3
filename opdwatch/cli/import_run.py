"""`opdwatch import FORMAT SRC RUN_DIR`: turn another framework's files into a run directory.

Formats, files and the metric-name mappings: docs/integrations.md ("Importers"). The library call is
:func:`opdwatch.importers.import_run`; this module only parses and prints.
"""

from __future__ import annotations

import argparse

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from opdwatch import jsonout
from opdwatch.importers import FORMAT_MODULES, import_run
from opdwatch.importers.writer import ImportReport
from opdwatch.terminal import console, shown


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("format", metavar="FORMAT", choices=list(FORMAT_MODULES),
                   help=f"one of: {', '.join(FORMAT_MODULES)}")
    p.add_argument("src", metavar="SRC", help="the framework's file or folder (docs/integrations.md, Importers)")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run directory to create (missing or empty)")
    p.add_argument("--eos-token-id", dest="eos_token_ids", type=int, action="append", default=[], metavar="ID",
                   help="recompute each rollout's finish from its tokens: ended on this id = EOS (repeatable)")
    p.add_argument("--metrics", metavar="PATH", help="slime / NeMo-RL: the run's step metrics (a wandb run "
                   "file or folder, or a JSONL of {\"step\": N, ...})")
    p.add_argument("--rollouts", metavar="DIR", help="verl: its trainer.rollout_data_dir ({step}.jsonl dumps)")
    p.add_argument("--max-response-length", type=int, metavar="N",
                   help="the generation budget (verl: data.max_response_length), to check the clip ratio against")
    p.add_argument("--framework", help="wandb: use this framework's metric names instead of recognising them")
    p.add_argument("--allow-pickle", action="store_true",
                   help="slime: load dumps with full pickle (only for files you trust)")
    p.add_argument("--any-wandb-version", action="store_true",
                   help="wandb: read files of a wandb version outside the checked range")
    p.add_argument("--tail-window", type=int, default=10_000, help="repetition rule: characters (default 10000)")
    p.add_argument("--tail-threshold", type=float, default=0.1, help="repetition rule: zlib ratio (default 0.1)")
    p.add_argument("--json", action="store_true", help="print the import report as JSON")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    err = console(stderr=True)
    options = {"eos_token_ids": args.eos_token_ids, "metrics": args.metrics, "rollouts": args.rollouts,
               "max_response_length": args.max_response_length, "framework": args.framework,
               "allow_pickle": args.allow_pickle, "any_wandb_version": args.any_wandb_version,
               "tail_window": args.tail_window, "tail_threshold": args.tail_threshold}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True, disable=not err.is_terminal) as progress:
        task = progress.add_task(f"importing {shown(args.format)} steps", total=None)
        report = import_run(args.format, args.src, args.run_dir,
                            progress=lambda done, total: progress.update(task, completed=done, total=total),
                            **options)
    if args.json:
        print(jsonout.dumps(report.summary()))
        return 0
    _print(report)
    return 0


def _print(r: ImportReport) -> None:
    out = console(soft_wrap=True)
    out.print(f"imported [bold]{shown(r.format)}[/] {shown(r.source)} -> {shown(r.run_dir)}: {r.steps} train steps, "
              f"{r.rollouts} rollouts, {r.tokens} tokens")
    if r.matched:
        out.print(f"metric names matched: {shown(r.matched)}")
    if r.recomputed:
        out.print(f"recomputed from the records: {shown(', '.join(r.recomputed))}")
    if r.from_framework:
        out.print("taken from the framework's figures: "
                  + shown(", ".join(f"{k} <- {v}" for k, v in sorted(r.from_framework.items()))))
    if r.disagreements:
        table = Table(title="figures that disagree (ours, or the framework's first, against the framework's)")
        for col in ("metric", "framework metric", "steps", "first", "against", "value", "framework"):
            table.add_column(col)
        for d in r.disagreements:
            table.add_row(shown(d.metric), shown(d.framework_key), f"{len(d.steps)} of {d.compared}", str(d.steps[0]),
                          shown(d.against), f"{d.ours[0]:.4g}", f"{d.theirs[0]:.4g}")
        out.print(table)
        for d in r.disagreements:
            if d.note:
                out.print(f"  {shown(d.framework_key)}: {shown(d.note)}")
    for finding in r.findings:
        out.print(f"check: {shown(finding)}")
    out.print(f"detector signals this import can feed: {shown(', '.join(r.signals) or 'none')}")
    out.print(f"next: opdwatch analyze {shown(r.run_dir)}")
