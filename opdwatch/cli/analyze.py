"""`opdwatch analyze RUN_DIR [RUN_DIR ...]`: onset, verdict and latest health per run, and report.html.

Runs still being written are read as they stand (only whole files are listed). Progress goes to stderr,
so ``--json`` output on stdout stays machine-readable.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from opdwatch.analysis import LATEST, RunAnalysis, analyze_run, open_checked, unique_labels

_VERDICT_STYLE = {"healthy": "green", "inflating": "yellow", "collapsed": "bold red"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="diagnose runs: onset of length inflation, verdict, report.html")
    p.add_argument("run_dirs", metavar="RUN_DIR", nargs="+", help="run directories (several are overlaid)")
    p.add_argument("--out", type=Path, default=Path("report.html"),
                   help="where to write the HTML report (default: ./report.html)")
    p.add_argument("--no-report", action="store_true", help="only print the summary, write no report")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.add_argument("--skip-corrupt", action="store_true",
                   help="analyse the readable rest of a run that has unreadable Parquet files")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    err = Console(stderr=True)
    runs = [open_checked(path, skip_corrupt=args.skip_corrupt) for path in args.run_dirs]
    analyses: list[RunAnalysis] = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True, disable=not err.is_terminal) as progress:
        for run, label in zip(runs, unique_labels(runs), strict=True):
            task = progress.add_task(f"aggregating {label} (token rows)", total=None)

            def update(done: int, total: int, task: int = task) -> None:
                progress.update(task, completed=done, total=total)

            analyses.append(analyze_run(run, label=label, progress=update))
            progress.update(task, description=f"{label} done")
    summaries = [a.summary() for a in analyses]
    report = None
    if not args.no_report:
        from opdwatch.report import write_report  # plotly.js is only loaded when a report is written

        report = write_report(analyses, args.out)
    if args.json:
        print(json.dumps({"runs": summaries, "report": None if report is None else str(report)}, indent=2))
        return 0
    console = Console()
    for s in summaries:
        console.print(_table(s))
        for reason in s["reasons"]:
            console.print(f"  - {reason}", highlight=False, markup=False)
        console.print(f"  {s['token_series']}", style="dim", markup=False)
    if report is not None:
        console.print(f"report: {report}", markup=False)
    return 0


def _table(s: dict) -> Table:
    style = _VERDICT_STYLE.get(s["verdict"], "")
    table = Table(title=f"{s['label']}  ({s['path']})", title_justify="left", show_header=False)
    table.add_column("key")
    table.add_column("value", justify="right")
    table.add_row("status", s["status"])
    table.add_row("steps", f"{s['steps']} (steps {s['first_step']}-{s['last_step']})")
    table.add_row("onset step", "-" if s["onset_step"] is None else str(s["onset_step"]))
    table.add_row("verdict", f"[{style}]{s['verdict']}[/]" if style else s["verdict"])
    for column, name in LATEST:
        latest = s["latest"].get(column)
        if latest is not None and latest["value"] is not None:
            table.add_row(name, f"{latest['value']:.4g} (step {latest['step']})")
    return table
