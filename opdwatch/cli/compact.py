"""`opdwatch compact RUN_DIR`: rewrite the finished steps' small files into a few large segment files."""

from __future__ import annotations

import argparse

from opdwatch.compaction import CompactionSettings, compact
from opdwatch.terminal import console, shown
from opdwatch.text import plural


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--max-token-rows", type=int, default=CompactionSettings.max_token_rows,
                   help="token rows per segment at most (default %(default)s)")
    p.add_argument("--no-wait", action="store_true", help="do nothing if another compaction is running")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from opdwatch.errors import OpdwatchError

    if args.max_token_rows < 1:
        raise OpdwatchError(f"--max-token-rows must be >= 1, got {args.max_token_rows}")
    out = console()
    settings = CompactionSettings(max_token_rows=args.max_token_rows)
    with Progress("compacting", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=out,
                  transient=True) as bar:
        task = bar.add_task("rows", total=None)
        result = compact(args.run_dir, settings=settings, wait=not args.no_wait,
                         progress=lambda done, total: bar.update(task, completed=done, total=total))
    if result.busy:
        out.print("another compaction is running: nothing done")
        return 0
    line = (f"{shown(args.run_dir)}: {plural(result.steps, 'step')} compacted into "
            f"{plural(len(result.segments), 'segment')} ({plural(result.files, 'file')} replaced)")
    if result.removed:
        line += f"; {plural(result.removed, 'leftover')} of an interrupted compaction removed"
    if result.left:
        line += f"; {plural(len(result.left), 'final step')} with odd or damaged files left as they are"
    out.print(line, soft_wrap=True)
    return 0
