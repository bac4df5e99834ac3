"""`opdwatch info RUN_DIR`: status, steps and the last step's health metrics."""

from __future__ import annotations

import argparse

from rich.table import Table

from opdwatch import jsonout
from opdwatch.metric_defs import ACCURACY
from opdwatch.reader import open_run
from opdwatch.step_table import steps_line
from opdwatch.summary import HEADLINE_METRICS, run_summary
from opdwatch.terminal import console, shown


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--json", action="store_true", help="print the summary as JSON (strict: see docs/run-format.md)")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    summary = run_summary(open_run(args.run_dir))
    if args.json:
        print(jsonout.dumps(summary))
        return 0
    out = console()
    # run id, path, status and times come from the run directory: shown() keeps them text, not markup
    out.print(f"[bold]{shown(summary['run_id'])}[/]  {shown(summary['path'])}", soft_wrap=True)
    out.print(f"status [bold]{shown(summary['status'])}[/], {steps_line(summary)}, "
              f"updated {shown(summary['updated_at'])}", soft_wrap=True)
    table = Table(title=f"health at step {summary['last_step']}")
    table.add_column("metric")
    table.add_column("train", justify="right")
    table.add_column("val", justify="right")
    for key, label in (*HEADLINE_METRICS, (ACCURACY, "accuracy")):
        train, val = summary["last_train"].get(key), summary["last_val"].get(key)
        if train is None and val is None:
            continue
        table.add_row(label, _fmt(train), _fmt(val))
    out.print(table)
    return 0


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"
