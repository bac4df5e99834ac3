"""Cold opens of a big run: ``opdwatch info``, ``opdwatch analyze`` and the dashboard's first load, each in a
fresh process (interpreter start and imports included, as a user sees them), before and after compaction.

    python benchmarks/cold_open.py RUN                    # time the run as it is
    python benchmarks/cold_open.py RUN --compact          # then compact a copy and time it again
    python benchmarks/cold_open.py --record RUN           # first record the 2,000-step / 20M-row run there
    python benchmarks/cold_open.py RUN --whole-only       # only the whole `opdwatch info` / `--help` processes

The run is the one of ``benchmarks/dashboard_tick.py`` (2,000 steps x 10,000 token rows, 6,000 files),
recorded with the Recorder. Goals (issue 17): dashboard cold open < 1 s, ``analyze`` < 1.5 s, ``info`` < 0.5 s.
Each figure is the median of ``--repeats`` fresh processes: the wall and CPU time of the work after imports, and
the CPU time of the imports that command's process makes (the CLI imports only the module of the command it runs);
the load average is printed with it (the machine is shared). Then whole processes as a user starts them
(``opdwatch --help``, ``opdwatch info RUN``, ``opdwatch info --json RUN``; interpreter start, imports, work and
exit): the median wall and CPU time of ``--processes`` of each.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

# One cold open in a fresh process: imports, then the work, each as (wall s, CPU s of the process). The imports
# are the command's: the CLI parser and the command's module (`opdwatch info` imports opdwatch.cli.info only).
COLD = r"""
import json, sys, time, warnings
warnings.simplefilter("ignore")
t0, c0 = time.perf_counter(), time.process_time()
what, run = sys.argv[1], sys.argv[2]
from opdwatch.cli import build_parser
build_parser().parse_args([what, run])  # what `opdwatch WHAT RUN` imports before it starts: the command's module
if what == "info":
    from opdwatch.reader import open_run
    from opdwatch.summary import run_summary
elif what == "analyze":
    from opdwatch.analysis import analyze_run
    from opdwatch.reader import open_run
else:
    from opdwatch.live import LiveRun
t1, c1 = time.perf_counter(), time.process_time()
if what == "info":
    run_summary(open_run(run))
elif what == "analyze":
    analyze_run(open_run(run))
else:
    live = LiveRun(run)
    live.series()
    live.lengths()
t2, c2 = time.perf_counter(), time.process_time()
print(json.dumps({"imports": [t1 - t0, c1 - c0], "work": [t2 - t1, c2 - c1]}))
"""
WHAT = ("info", "analyze", "dashboard")
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}  # cached bytecode, as users have


def measure(run: Path, repeats: int) -> dict[str, tuple[float, float, float]]:
    """Per command: median (work wall s, work CPU s, import CPU s) of ``repeats`` fresh processes."""
    out = {}
    for what in WHAT:
        samples = []
        for _ in range(repeats):
            proc = subprocess.run([sys.executable, "-c", COLD, what, str(run)], capture_output=True, text=True,
                                  check=False, env=ENV)
            if proc.returncode != 0:
                raise SystemExit(f"{what} failed: {proc.stderr[-2000:]}")
            samples.append(json.loads(proc.stdout))
        out[what] = (statistics.median(s["work"][0] for s in samples), statistics.median(s["work"][1] for s in samples),
                     statistics.median(s["imports"][1] for s in samples))
    return out


def whole_processes(run: Path, processes: int) -> dict[str, tuple[float, float]]:
    """Per command line: median (wall s, CPU s) of ``processes`` whole `opdwatch` processes (the console script
    beside this interpreter, as a user types it)."""
    exe = Path(sys.executable).with_name("opdwatch")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "opdwatch.cli"]
    out = {}
    for label, argv in (("opdwatch --help", ["--help"]), ("opdwatch info RUN", ["info", str(run)]),
                        ("opdwatch info --json RUN", ["info", "--json", str(run)])):
        walls, cpus = [], []
        for _ in range(processes):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            proc = subprocess.run([*cmd, *argv], capture_output=True, text=True, check=False, env=ENV)
            walls.append(time.perf_counter() - t0)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
            if proc.returncode != 0:
                raise SystemExit(f"{label} failed: {proc.stderr[-2000:]}")
        out[label] = (statistics.median(walls), statistics.median(cpus))
    return out


def print_whole(console: Console, run: Path, processes: int) -> None:
    figures = whole_processes(run, processes)
    load = os.getloadavg()[0]
    table = Table(title=f"whole processes on {run} (median of {processes}; interpreter start, imports, work, exit)")
    for col in ("command", "wall s", "CPU s", "load"):
        table.add_column(col, justify="right")
    for label, (wall, cpu) in figures.items():
        table.add_row(label, f"{wall:.2f}", f"{cpu:.2f}", f"{load:.1f}")
    console.print(table)
    console.print("goal: a whole `opdwatch info` process < 0.5 s wall (issue 17)")


def count_files(run: Path) -> int:
    return sum(1 for p in run.rglob("*.parquet"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--record", action="store_true", help="record the 2,000-step run at RUN first")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--compact", action="store_true", help="also compact a copy of RUN and time it")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--processes", type=int, default=5, help="whole processes timed per command line")
    ap.add_argument("--whole-only", action="store_true", help="only time whole `opdwatch` processes on RUN")
    args = ap.parse_args()
    console = Console(width=150)
    if args.whole_only:
        print_whole(console, args.run, args.processes)
        return
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
        subprocess.run([sys.executable, "-m", "opdwatch.cli", "compact", str(copy)], check=True, capture_output=True)
        console.print(f"opdwatch compact: {time.perf_counter() - t0:.2f} s")
        results["compacted"] = (count_files(copy), measure(copy, args.repeats), os.getloadavg()[0])
    table = Table(title=f"cold opens of {args.run} (median of {args.repeats} processes; wall / CPU s of the work "
                  "after imports)")
    for col in ("layout", "parquet files", *WHAT, "imports CPU s (info / analyze / dashboard)", "load"):
        table.add_column(col, justify="right")
    for name, (files, figures, load) in results.items():
        table.add_row(name, f"{files:,}", *(f"{figures[k][0]:.2f} / {figures[k][1]:.2f}" for k in WHAT),
                      " / ".join(f"{figures[k][2]:.2f}" for k in WHAT), f"{load:.1f}")
    console.print(table)
    console.print("goals: dashboard < 1 s, analyze < 1.5 s, info < 0.5 s (dashboard: LiveRun + series + lengths; "
                  "analyze: open_run + analyze_run; info: open_run + run_summary)")
    print_whole(console, copy if args.compact else args.run, args.processes)


if __name__ == "__main__":
    main()
