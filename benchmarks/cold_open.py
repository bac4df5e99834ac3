"""Cold opens of a big run: ``opdwatch info``, ``opdwatch analyze`` and the dashboard's first load, each in a
fresh process (interpreter start and imports included, as a user sees them), before and after compaction.

    python benchmarks/cold_open.py RUN                    # time the run as it is
    python benchmarks/cold_open.py RUN --compact          # then compact a copy and time it again
    python benchmarks/cold_open.py --record RUN           # first record the 2,000-step / 20M-row run there

The run is the one of ``benchmarks/dashboard_tick.py`` (2,000 steps x 10,000 token rows, 6,000 files),
recorded with the Recorder. Goals (issue 17): dashboard cold open < 1 s, ``analyze`` < 1.5 s, ``info`` < 0.5 s.
Each figure is the median of ``--repeats`` runs; the load average is printed with it (the machine is shared).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

DASHBOARD_COLD = r'''
import sys, time
t0 = time.perf_counter()
from pathlib import Path
from opdwatch.dashboards.app import create_app
from flask import Flask
run = Path(sys.argv[1])
app = create_app(run.parent, refresh_ms=2000)
page = sys.modules["pages.run"]
with app.server.test_request_context():
    t1 = time.perf_counter()
    page.refresh(0, run.name, None)
    t2 = time.perf_counter()
print(f"{t2 - t0:.4f} {t2 - t1:.4f}")
'''


def timed(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {out.stderr[-2000:]}")
    return elapsed, out.stdout


def measure(run: Path, repeats: int) -> dict[str, float]:
    py = sys.executable
    rows: dict[str, list[float]] = {"info": [], "analyze": [], "dashboard (process)": [], "dashboard (page)": []}
    for _ in range(repeats):
        rows["info"].append(timed([py, "-m", "opdwatch.cli", "info", str(run), "--json"])[0])
        rows["analyze"].append(timed([py, "-m", "opdwatch.cli", "analyze", str(run), "--json", "--no-report"])[0])
        _, out = timed([py, "-c", DASHBOARD_COLD, str(run)])
        whole, page = (float(x) for x in out.split())
        rows["dashboard (process)"].append(whole)
        rows["dashboard (page)"].append(page)
    return {k: statistics.median(v) for k, v in rows.items()}


def count_files(run: Path) -> int:
    return sum(1 for p in run.rglob("*.parquet"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--record", action="store_true", help="record the 2,000-step run at RUN first")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--compact", action="store_true", help="also compact a copy of RUN and time it")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    console = Console(width=150)
    if args.record:
        sys.path.insert(0, str(Path(__file__).parent))
        from dashboard_tick import Writer

        writer = Writer(args.run, 10_000)
        for step in range(args.steps):
            writer.step(step, args.steps)
        writer.rec.close()
    results = {"as recorded": (count_files(args.run), measure(args.run, args.repeats), os.getloadavg()[0])}
    if args.compact:
        copy = args.run.with_name(args.run.name + "-compacted")
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(args.run, copy)
        t0 = time.perf_counter()
        timed([sys.executable, "-m", "opdwatch.cli", "compact", str(copy)])
        console.print(f"opdwatch compact: {time.perf_counter() - t0:.2f} s")
        results["compacted"] = (count_files(copy), measure(copy, args.repeats), os.getloadavg()[0])
    table = Table(title=f"cold opens of {args.run} (median of {args.repeats}, s)")
    for col in ("layout", "parquet files", "info", "analyze", "dashboard (process)", "dashboard (page)", "load"):
        table.add_column(col, justify="right")
    for name, (files, figures, load) in results.items():
        table.add_row(name, f"{files:,}", *(f"{figures[k]:.2f}" for k in figures), f"{load:.2f}")
    console.print(table)
    console.print("goals: dashboard < 1 s, analyze < 1.5 s, info < 0.5 s")


if __name__ == "__main__":
    main()
