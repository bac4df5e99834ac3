"""Compaction of a big run: time, idempotence, random kill -9s, and Delta Lake (delta-rs) side by side.

    python benchmarks/compaction.py RUN                     # RUN: e.g. the run of benchmarks/cold_open.py --record
    python benchmarks/compaction.py RUN --kills 20 --delta  # + 20 killed compactions + the Delta Lake comparison

1. ``opdwatch compact`` on a copy of RUN: wall and CPU time (of the child process), files before and after, and
   a second pass (must change nothing).
2. ``--kills N``: N more copies, each compacted by a subprocess that is sent SIGKILL at a random instant of
   the uninterrupted pass's duration (seeded); each killed run must read back with the same per-step
   aggregates and the same rows (counts and exact integer sums per table) as RUN, and so again after a
   finishing pass.
3. ``--delta``: the token table of RUN written as a Delta table with ``deltalake`` (one append commit per step,
   as a recorder would), ``optimize.compact()`` + ``vacuum``, and the per-step token aggregation read back with
   polars over it; next to the same steps written as format-1 files, compacted, and aggregated by opdwatch.

Figures depend on the machine's load (printed): the CPU is shared.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
from rich.console import Console
from rich.table import Table

ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def files(run: Path) -> int:
    return sum(1 for p in run.rglob("*.parquet") if not p.name.startswith("."))


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def compact_cmd(run: Path) -> list[str]:
    return [sys.executable, "-m", "opdwatch.cli", "compact", str(run)]


def fingerprint(run: Path) -> tuple[pl.DataFrame, dict[str, tuple[int, ...]]]:
    """The run's step series, and per table its row count and exact integer sums (a duplicated or missing
    row changes them)."""
    from opdwatch.reader import open_run
    from opdwatch.series import step_series

    r = open_run(run)
    sums = {
        "steps": r.steps().select(pl.len(), pl.col("step").sum()).collect().row(0),
        "rollouts": r.rollouts().select(pl.len(), pl.col("num_tokens").cast(pl.Int64).sum(),
                                        pl.col("rollout").sum()).collect().row(0),
        "tokens": r.tokens().select(pl.len(), pl.col("token_id").cast(pl.Int64).sum(),
                                    pl.col("position").cast(pl.Int64).sum()).collect().row(0),
    }
    return step_series(r), sums


def same(a: tuple[pl.DataFrame, dict], b: tuple[pl.DataFrame, dict]) -> str:
    if a[1] != b[1]:
        return "ROWS DIFFER"
    if a[0].equals(b[0]):
        return "identical"
    from polars.testing import assert_frame_equal

    try:
        assert_frame_equal(a[0], b[0], rel_tol=1e-12, abs_tol=0.0)
    except AssertionError:
        return "SERIES DIFFER"
    return "same (floats to 1e-12)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--kills", type=int, default=0)
    ap.add_argument("--delta", action="store_true")
    ap.add_argument("--work", type=Path, default=None, help="where the copies go (default: a temp dir)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not (args.run / "manifest.json").is_file():  # a one-line answer, not a traceback from the reader
        print(f"compaction.py: error: {args.run} is not a run directory (no manifest.json); record one with "
              "`python benchmarks/cold_open.py --record RUN`", file=sys.stderr)
        raise SystemExit(2)
    console = Console(width=150)
    work = Path(tempfile.mkdtemp(prefix="opdwatch-compaction-", dir=args.work))
    try:
        reference = fingerprint(args.run)
        copy = shutil.copytree(args.run, work / "whole")
        before = files(copy)
        cpu0, t0 = children_cpu(), time.perf_counter()
        subprocess.run(compact_cmd(copy), check=True, env=ENV, capture_output=True)
        wall, cpu = time.perf_counter() - t0, children_cpu() - cpu0
        load = os.getloadavg()[0]
        after = files(copy)
        listing = sorted(p.relative_to(copy) for p in copy.rglob("*.parquet"))
        t1 = time.perf_counter()
        subprocess.run(compact_cmd(copy), check=True, env=ENV, capture_output=True)
        again = time.perf_counter() - t1
        idempotent = sorted(p.relative_to(copy) for p in copy.rglob("*.parquet")) == listing
        result = same(reference, fingerprint(copy))
        table = Table(title=f"opdwatch compact {args.run}")
        for col in ("files before", "files after", "wall s", "CPU s", "load", "second pass s", "idempotent",
                    "read back"):
            table.add_column(col, justify="right")
        table.add_row(f"{before:,}", f"{after:,}", f"{wall:.1f}", f"{cpu:.1f}", f"{load:.1f}", f"{again:.1f}",
                      "yes" if idempotent else "NO", result)
        console.print(table)
        if args.kills:
            kill_loop(args, reference, wall, work, console)
        if args.delta:
            delta_side_by_side(args.run, work, console)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def kill_loop(args: argparse.Namespace, reference: tuple, wall: float, work: Path, console: Console) -> None:
    rng = random.Random(args.seed)
    table = Table(title=f"{args.kills} compactions killed with SIGKILL at random instants")
    for col in ("#", "killed after s", "state left", "read back", "after a finishing pass"):
        table.add_column(col, justify="right")
    ok = 0
    for i in range(args.kills):
        run = shutil.copytree(args.run, work / f"kill-{i}")
        delay = rng.uniform(0.0, wall)
        proc = subprocess.Popen(compact_cmd(run), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = describe(run)
        first = same(reference, fingerprint(run))
        subprocess.run(compact_cmd(run), check=True, env=ENV, capture_output=True)
        second = same(reference, fingerprint(run))
        ok += first.startswith(("identical", "same")) and second.startswith(("identical", "same"))
        table.add_row(str(i + 1), f"{delay:.2f}", state, first, second)
        shutil.rmtree(run, ignore_errors=True)
    console.print(table)
    console.print(f"{ok} of {args.kills} killed runs read back with the reference's rows and aggregates")


def describe(run: Path) -> str:
    """What a killed pass left: a build in progress, a commit with small files still around, or nothing."""
    base = run / "compacted"
    if not base.is_dir():
        return "not started"
    names = [p.name for p in base.iterdir() if p.name != ".lock"]
    committed = [n for n in names if not n.startswith(".")]
    small = sum(1 for t in ("steps", "rollouts", "tokens") for _ in (run / t).glob("step=*"))
    if not committed:
        return "building" if names else "not started"
    return f"committed, {small:,} old partitions left" if small else "committed and cleaned"


def delta_side_by_side(run: Path, work: Path, console: Console) -> None:
    import deltalake
    import pyarrow.parquet as pq

    from opdwatch.atomic import write_parquet
    from opdwatch.compaction import compact
    from opdwatch.format import part_path
    from opdwatch.reader import open_run
    from opdwatch.series import token_aggregates

    token_files = sorted((p for p in (run / "tokens").rglob("*.parquet")), key=str)
    steps = [pq.read_table(p) for p in token_files]
    rows = sum(t.num_rows for t in steps)
    plain = [t.cast(pl.DataFrame(t.slice(0, 0)).to_arrow().schema) for t in steps]  # no dictionary columns
    delta_dir, v1_dir = work / "delta", work / "v1"
    shutil.copytree(run, v1_dir, ignore=shutil.ignore_patterns("tokens"))

    t0 = time.perf_counter()
    for t in plain:
        deltalake.write_deltalake(delta_dir, t, mode="append")
    delta_write = time.perf_counter() - t0
    t0 = time.perf_counter()
    for t, src in zip(steps, token_files, strict=True):
        rel = src.relative_to(run / "tokens")
        step, rank = int(rel.parts[0][5:]), int(rel.parts[1][5:])
        write_parquet(t, part_path(v1_dir, "tokens", step, rank, "train"), dictionary_columns=["step", "rank",
                      "rollout"], stats_columns=["step", "rank", "rollout", "position"])
    v1_write = time.perf_counter() - t0

    def delta_aggregate() -> pl.DataFrame:  # the same 12 per-step token aggregates (series.metric_expr)
        from opdwatch import metric_defs
        from opdwatch.run_files import TABLE_SCHEMAS
        from opdwatch.series import metric_expr

        exprs = [metric_expr(d, TABLE_SCHEMAS["tokens"]) for d in metric_defs.TOKEN_METRICS]
        return pl.scan_delta(str(delta_dir)).group_by("step").agg(*exprs, pl.len()).collect(engine="streaming")

    def timed(fn):  # noqa: ANN001, ANN202
        t = time.perf_counter()
        out = fn()
        return time.perf_counter() - t, out

    delta_read_before, _ = timed(delta_aggregate)
    v1_read_before, _ = timed(lambda: token_aggregates(open_run(v1_dir).parts("tokens")))
    delta_files_before = sum(1 for _ in delta_dir.rglob("*.parquet"))
    t0 = time.perf_counter()
    dt = deltalake.DeltaTable(str(delta_dir))
    dt.optimize.compact()
    dt.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
    dt.create_checkpoint()
    delta_optimize = time.perf_counter() - t0
    t0 = time.perf_counter()
    compact(v1_dir)
    v1_compact = time.perf_counter() - t0
    delta_read_after, _ = timed(delta_aggregate)
    v1_read_after, _ = timed(lambda: token_aggregates(open_run(v1_dir).parts("tokens")))
    table = Table(title=f"token table of {run.name}: {len(steps):,} step appends, {rows:,} rows "
                  f"(load {os.getloadavg()[0]:.1f})")
    for col in ("layout", "write s (per append ms)", "files", "compact s", "files after", "aggregate s before",
                "aggregate s after"):
        table.add_column(col, justify="right")
    table.add_row("Delta Lake (deltalake " + deltalake.__version__ + ")",
                  f"{delta_write:.1f} ({delta_write / len(steps) * 1000:.1f})", f"{delta_files_before:,}",
                  f"{delta_optimize:.1f}", f"{sum(1 for _ in delta_dir.rglob('*.parquet')):,}",
                  f"{delta_read_before:.2f}", f"{delta_read_after:.2f}")
    table.add_row("format 1 + opdwatch compact", f"{v1_write:.1f} ({v1_write / len(steps) * 1000:.1f})",
                  f"{len(token_files):,}", f"{v1_compact:.1f}", f"{files(v1_dir / 'compacted'):,}",
                  f"{v1_read_before:.2f}", f"{v1_read_after:.2f}")
    console.print(table)
    console.print("aggregate: the 12 per-step token aggregates of the step series; Delta: a polars group-by over "
                  "scan_delta; format 1: opdwatch's token_aggregates (after compaction: the segment's sidecar)")


if __name__ == "__main__":
    main()
