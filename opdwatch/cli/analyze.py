"""`opdwatch analyze RUN_DIR [RUN_DIR ...]`: onset, verdict and latest health per run, and report.html.

Runs still being written are read as they stand (only whole files are listed). Progress goes to stderr,
so ``--json`` output on stdout stays machine-readable; with ``--json`` a report is written only to an
explicit ``--out`` (a script asking for JSON does not expect a file to appear in its working directory).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from opdwatch import jsonout
from opdwatch.analysis import LATEST, RunAnalysis, analyze_run, open_checked, unique_labels
from opdwatch.comparison import compact_cells, comparison_rows
from opdwatch.step_table import collapse_text
from opdwatch.terminal import console, plain, shown

# by verdict kind: "collapsed, recovering" is a collapse too
_VERDICT_STYLE = {"healthy": "green", "inflating": "yellow", "degraded": "yellow", "collapsed": "bold red",
                  "unknown": "dim"}
DEFAULT_REPORT = Path("report.html")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dirs", metavar="RUN_DIR", nargs="+", help="run directories (several are overlaid)")
    p.add_argument("--out", type=Path, default=None,
                   help="where to write the HTML report (default: ./report.html; with --json only when given)")
    p.add_argument("--no-report", action="store_true", help="only print the summary, write no report")
    p.add_argument("--json", action="store_true",
                   help="print the summary as JSON on stdout (strict: see docs/run-format.md); writes a report "
                   "only with --out")
    p.add_argument("--skip-corrupt", action="store_true",
                   help="analyse the readable rest of a run that has unreadable Parquet files")
    p.set_defaults(handler=handle)


def report_path(args: argparse.Namespace) -> Path | None:
    """Where the report goes: nowhere with --no-report, or with --json and no --out; else --out or ./report.html."""
    if args.no_report or (args.json and args.out is None):
        return None
    return args.out or DEFAULT_REPORT


def handle(args: argparse.Namespace) -> int:
    err = console(stderr=True)
    runs = [open_checked(path, skip_corrupt=args.skip_corrupt) for path in args.run_dirs]
    analyses: list[RunAnalysis] = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True, disable=not err.is_terminal) as progress:
        for run, label in zip(runs, unique_labels(runs), strict=True):
            # task descriptions are rendered as markup: the label is a run id
            task = progress.add_task(f"aggregating {shown(label)} (token rows)", total=None)

            def update(done: int, total: int, task: int = task) -> None:
                progress.update(task, completed=done, total=total)

            analyses.append(analyze_run(run, label=label, progress=update))
            progress.update(task, description=f"{shown(label)} done")
    summaries = [a.summary() for a in analyses]
    out = report_path(args)
    report = None
    if out is not None:
        from opdwatch.report import write_report  # plotly.js is only loaded when a report is written

        report = write_report(analyses, out)
    if args.json:
        if report is not None:  # stdout is the JSON; where the file went is said beside it
            print(f"report: {plain(report)}", file=sys.stderr)
        print(jsonout.dumps({"runs": summaries, "comparison": comparison_rows(analyses),
                             "report": None if report is None else str(report)}))
        return 0
    con = console()
    for s in summaries:
        # a heading line, not the table's title: a title wraps at the table's width and would break the path
        con.print(f"[bold]{shown(s['label'])}[/]  ({shown(s['path'])})", soft_wrap=True)
        con.print(_table(s))
        for reason in s["reasons"]:
            con.print(f"  - {plain(reason)}", highlight=False, markup=False)
        con.print(f"  {plain(s['token_series'])}", style="dim", markup=False)
    if len(analyses) > 1:
        con.print(comparison_table(comparison_rows(analyses)))
    if report is not None:
        con.print(f"report: {plain(report)}", markup=False, soft_wrap=True)
    return 0


def comparison_table(rows: list[dict]) -> Table:
    """The arms side by side, one row each (the layout of the paper's Table 2; the report has every column)."""
    headings, cells = compact_cells(rows)
    table = Table(title="comparison (Table 2 layout)")
    for heading in headings:
        table.add_column(heading, justify="left" if heading in ("arm", "verdict") else "right")
    for row in cells:
        table.add_row(*(shown(c) for c in row))
    return table


def _table(s: dict) -> Table:
    style = _VERDICT_STYLE.get(s.get("verdict_kind", s["verdict"]), "")
    table = Table(show_header=False)
    table.add_column("key")
    table.add_column("value", justify="right")
    table.add_row("status", shown(s["status"]))
    table.add_row("train steps", steps_cell(s))
    table.add_row("collapse step", collapse_text(s).removeprefix("collapse at ").removeprefix("collapse "))
    table.add_row("onset step", "-" if s["onset_step"] is None else str(s["onset_step"]))
    table.add_row("verdict", f"[{style}]{shown(s['verdict'])}[/]" if style else shown(s["verdict"]))
    for e in s.get("episodes", []):
        span = f"steps {e['start']}-{e['end']}" if e["end"] is not None else f"since step {e['start']}"
        table.add_row("collapse episode", f"{span}, peak {e['peak']:.2f} (step {e['peak_step']})")
    for column, name in LATEST:
        latest = s["latest"].get(column)
        if latest is not None and latest["value"] is not None:
            table.add_row(name, f"{latest['value']:.4g} (step {latest['step']})")
    return table


def steps_cell(s: dict) -> str:
    """``5 (steps 1-8, 3 missing)``: the train steps of the step facts."""
    if not s["steps"]:
        return "0"
    missing = f", {s['missing_steps']} missing" if s["missing_steps"] else ""
    return f"{s['steps']} (steps {s['first_step']}-{s['last_step']}{missing})"
