"""Time and peak memory of `opdwatch analyze` against DuckDB over the same files, on growing runs (issue 17).

    python benchmarks/analyze_scale.py                        # 50M, 100M, 200M, 500M token rows
    python benchmarks/analyze_scale.py --sizes 1e9 --keep /tmp/bench-runs
    python benchmarks/analyze_scale.py --sizes 1e6,5e6,2e7,5e7 --pandas   # the old pandas comparison too
    python benchmarks/analyze_scale.py --sizes 5e8 --keep DIR --cache cold  # both read from disk (root)

Each run is written directly with pyarrow in the run format (manifest, steps, rollouts, tokens partitions;
the same schemas as the Recorder, ~250k token rows per step in rollouts of ~500 tokens, some looping and
truncated). Then, each in its own process so that peak RSS is per process (``os.wait4``):

- ``opdwatch analyze RUN --json --no-report``: the aggregation path (step series incl. the streaming token
  query, rollout aggregates, onset, verdict);
- DuckDB (``pip install duckdb``, the ``bench`` extra) running the same per-step token and rollout
  aggregations over the same Parquet files (benchmarks/duckdb_baseline.py), all cores;
- optionally the same in pandas (each table read with ``pyarrow.parquet``, converted, grouped by step);
- the token drill-down: open the run, the 5 worst rollouts (lowest mean advantage) of a collapsed step, and
  those rollouts' token rows (what the dashboard's drill-down reads).

It prints one table: rows, time and peak RSS of each, the time ratio, whether the per-step results are equal
(rel. 1e-9), opdwatch's rows/s (flat rows/s means time grows linearly with rows) and the 1-minute load average
(the machine is shared: ratios are measured side by side in one run).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from rich.console import Console
from rich.table import Table

from opdwatch.format import ROLLOUT_SCHEMA, TOKEN_SCHEMA, part_path
from opdwatch.manifest import new_manifest, write_manifest
from opdwatch.metric_defs import TRUNCATION_RATE

ROWS_PER_STEP = 250_000
MEAN_LEN = 500
BUDGET = 1024


# ------------------------------------------------------------------------------------------- run writer
def write_run(run_dir: Path, rows: int, seed: int = 0) -> int:
    """A run of about ``rows`` token rows; truncation jumps from ~5% to ~80% two thirds of the way in."""
    rng = np.random.default_rng(seed)
    run_dir.mkdir(parents=True)
    manifest = new_manifest(run_id=run_dir.name, config={"benchmark": True}, tokenizer={"eos_token_ids": [2]},
                            recorder_settings={"token_every_k_steps": 1, "token_rollout_fraction": 1.0},
                            world_size=1)
    steps = max(1, rows // ROWS_PER_STEP)
    written = 0
    for step in range(steps):
        n_rows = rows // steps + (rows % steps if step == steps - 1 else 0)
        collapsed = step >= 2 * steps // 3
        lens = _lengths(rng, n_rows, 0.8 if collapsed else 0.05)
        _write_step(run_dir, step, lens, rng, collapsed)
        written += int(lens.sum())
    manifest.update(status="finished", last_step=steps - 1)
    write_manifest(run_dir, manifest)
    return written


def _lengths(rng: np.random.Generator, rows: int, trunc_share: float) -> np.ndarray:
    lens = []
    total = 0
    while total < rows:
        n = BUDGET if rng.random() < trunc_share else int(rng.integers(MEAN_LEN // 4, MEAN_LEN * 3 // 2))
        n = min(n, rows - total)
        lens.append(n)
        total += n
    return np.array(lens, dtype=np.int64)


def _write_step(run_dir: Path, step: int, lens: np.ndarray, rng: np.random.Generator, collapsed: bool) -> None:
    r, n = len(lens), int(lens.sum())
    truncated = lens == BUDGET
    rollout_of = np.repeat(np.arange(r), lens)
    offsets = np.concatenate([[0], np.cumsum(lens)])
    position = np.arange(n) - np.repeat(offsets[:-1], lens)
    looping = np.repeat(truncated, lens) & (position > 100)
    student = rng.normal(-1.0, 0.4, n).astype(np.float32)
    teacher = np.where(looping, rng.normal(-0.3, 0.2, n), rng.normal(-1.3, 0.6, n)).astype(np.float32)
    eos = np.zeros(n, dtype=bool)
    eos[offsets[1:][~truncated] - 1] = True
    rep_ngram = looping | (rng.random(n) < 0.03)
    tokens = pa.table({
        "step": pa.array(np.full(n, step, np.int64)), "rank": pa.array(np.zeros(n, np.int32)),
        "rollout": pa.array(rollout_of.astype(np.int64)), "position": pa.array(position.astype(np.int32)),
        "token_id": pa.array(rng.integers(0, 32_000, n).astype(np.int32)),
        "char_end": pa.array((position * 4 + 4).astype(np.int32)),
        "student_logp": pa.array(student), "teacher_logp": pa.array(teacher),
        "ref_logp": pa.array(np.full(n, np.nan, np.float32)), "advantage": pa.array(teacher - student),
        "loss_mask": pa.array(np.ones(n, bool)), "special": pa.array(eos), "eos": pa.array(eos),
        "rep_tail": pa.array(looping), "rep_ngram": pa.array(rep_ngram),
    }).cast(TOKEN_SCHEMA)
    _write(tokens, part_path(run_dir, "tokens", step, 0, "train"),
           dictionary_columns=["step", "rank", "rollout"], stats_columns=["step", "rank", "rollout", "position"])
    rollouts = pa.table({
        "step": np.full(r, step, np.int64), "rank": np.zeros(r, np.int32), "rollout": np.arange(r, dtype=np.int64),
        "phase": ["train"] * r, "prompt_id": [f"p{i // 4}" for i in range(r)],
        "sample_index": (np.arange(r) % 4).astype(np.int32), "source": ["onpolicy"] * r,
        "num_tokens": lens.astype(np.int32), "finish_reason": np.where(truncated, "length", "eos").tolist(),
        "truncated": truncated, "zlib_tail_ratio": np.where(truncated, 0.1, 0.6),
        "repetitive": truncated, "seq_rep_n": np.where(truncated, 0.8, 0.03),
        "loop_onset": pa.array(np.full(r, 100, np.int32), mask=~truncated),
        "correct": pa.array(rng.random(r) < 0.5, mask=truncated), "student_logp_mean": np.full(r, -1.0),
        "teacher_logp_mean": np.full(r, -1.2), "advantage_mean": np.full(r, -0.2),
        "repetitive_token_share": np.where(truncated, 0.9, 0.03), "tokens_recorded": np.ones(r, bool),
        "prompt_text": ["Q: 1+1=?"] * r, "text": ["x" * 64] * r,
    }).cast(ROLLOUT_SCHEMA)
    _write(rollouts, part_path(run_dir, "rollouts", step, 0, "train"))
    steps = pa.table({"step": [step], "phase": ["train"], "rank": pa.array([0], pa.int32()), "time": [time.time()],
                      TRUNCATION_RATE: [float(truncated.mean())], "loss/total": [0.5]})
    _write(steps, part_path(run_dir, "steps", step, 0, "train"))


def _write(table: pa.Table, path: Path, **kw: object) -> None:
    from opdwatch.atomic import write_parquet

    write_parquet(table, path, **kw)


# ------------------------------------------------------------------------------------------- pandas baseline
PANDAS_BASELINE = r'''
import json, sys
from pathlib import Path
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

def read(files, cols):
    # Per file: the recorder dictionary-encodes step/rank/rollout, which a multi-file dataset cannot merge.
    tables = [pq.read_table(f, columns=cols) for f in files]
    plain = pa.schema([f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type) else f
                       for f in tables[0].schema])
    return pa.concat_tables([t.cast(plain) for t in tables]).to_pandas()

run = Path(sys.argv[1])
cols = ["step", "loss_mask", "student_logp", "teacher_logp", "ref_logp", "advantage", "eos", "rep_tail",
        "rep_ngram"]
files = sorted(run.glob("tokens/step=*/rank=*/train*.parquet"))
df = read(files, cols)
m = df["loss_mask"]
rep = df["rep_tail"] | df["rep_ngram"]
def masked(values, cond):
    return values.where(cond)
out = pd.DataFrame({
    "token/count": m.groupby(df["step"]).sum().astype(float),
})
g = lambda s: s.groupby(df["step"]).mean()
adv = df["advantage"].astype("float64")
out["token/student_logp_mean"] = g(masked(df["student_logp"].astype("float64"), m))
out["token/teacher_logp_mean"] = g(masked(df["teacher_logp"].astype("float64"), m))
out["token/ref_logp_mean"] = g(masked(df["ref_logp"].astype("float64"), m))
out["token/advantage_mean"] = g(masked(adv, m))
out["token/adv_repetitive_mean"] = g(masked(adv, m & rep))
out["token/adv_regular_mean"] = g(masked(adv, m & ~rep))
out["token/adv_tail_mean"] = g(masked(adv, m & df["rep_tail"]))
out["token/repetitive_share"] = g(masked(rep.astype("float64"), m))
out["token/ngram_repeat_share"] = g(masked(df["rep_ngram"].astype("float64"), m))
out["token/tail_share"] = g(masked(df["rep_tail"].astype("float64"), m))
out["token/eos_advantage_mean"] = g(masked(adv, df["eos"]))
rfiles = sorted(run.glob("rollouts/step=*/rank=*/train*.parquet"))
r = read(rfiles, ["step", "num_tokens", "truncated", "repetitive", "loop_onset", "zlib_tail_ratio", "correct"])
rg = r.groupby("step")
out["rollout/truncation_rate"] = rg["truncated"].mean()
out["rollout/mean_length"] = rg["num_tokens"].mean()
out["rollout/repetition_rate"] = rg["repetitive"].mean()
out["rollout/loop_rate"] = r["loop_onset"].notna().groupby(r["step"]).mean()
out["rollout/accuracy"] = r["correct"].astype("float64").groupby(r["step"]).mean()
print(json.dumps({k: [None if pd.isna(x) else float(x) for x in v] for k, v in out.reset_index().items()}))
'''


CACHE_MODES = ("as-is", "cold", "warm")


def drop_page_cache() -> None:
    """Empty the OS page cache (Linux, needs root): the next process reads the run's files from the disk."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("3\n")
    except OSError as e:
        print(f"analyze_scale.py: error: --cache cold needs root to write /proc/sys/vm/drop_caches: {e}",
              file=sys.stderr)
        raise SystemExit(2) from None


def measure(cmd: list[str], cache: str = "as-is") -> tuple[float, float, str]:
    """Wall time (s), peak RSS (MB) of ``cmd`` in its own process, and its stdout. The peak comes from GNU
    time: a child forked from this process would count this process's pages in its high-water mark.

    ``cache`` (``--cache``): as-is (whatever the page cache holds: the first command after writing a run reads it warm,
    a run written before a bigger one may be cold: not a fair comparison), cold (the page cache is dropped
    before each command) or warm (each command runs once untimed first)."""
    if cache == "cold":
        drop_page_cache()
    elif cache == "warm":
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    with tempfile.TemporaryFile() as out, tempfile.NamedTemporaryFile("r") as peak:
        t0 = time.perf_counter()
        proc = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", peak.name, *cmd], stdout=out,
                              stderr=subprocess.PIPE, check=False)
        elapsed = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
        out.seek(0)
        return elapsed, int(peak.read().split()[-1]) / 1024, out.read().decode()


DRILLDOWN = r"""
import json, sys, time
t0 = time.perf_counter()
import polars as pl
from opdwatch.drilldown import rollout_tokens
from opdwatch.live.run import order_rollouts
from opdwatch.reader import open_run
from opdwatch.reader import scan_parts
run = open_run(sys.argv[1])
t1 = time.perf_counter()
step = int(sys.argv[2])
rollouts = scan_parts(run.parts("rollouts", min_step=step), "rollouts").filter(pl.col("step") == step)
worst = order_rollouts(rollouts.collect(), "advantage").head(5)
t2 = time.perf_counter()
rows = [rollout_tokens(run, step=step, rollout=r["rollout"], rank=r["rank"]).height
        for r in worst.iter_rows(named=True)]
t3 = time.perf_counter()
print(json.dumps({"open": t1 - t0, "worst": t2 - t1, "tokens": t3 - t2, "rows": sum(rows)}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="5e7,1e8,2e8,5e8", help="token rows per run, comma-separated")
    ap.add_argument("--max-rows", type=float, default=None, help="skip sizes above this")
    ap.add_argument("--keep", type=Path, default=None, help="write (and reuse) runs here instead of a temp dir")
    ap.add_argument("--pandas", action="store_true", help="also run the pandas baseline (runs up to 50M rows)")
    ap.add_argument("--no-duckdb", action="store_true", help="skip the DuckDB baseline")
    ap.add_argument("--cache", choices=CACHE_MODES, default="as-is",
                    help="page cache before each timed process: as-is, cold (dropped; root) or warm (a run first)")
    args = ap.parse_args()
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    if args.max_rows:
        sizes = [s for s in sizes if s <= args.max_rows]
    console = Console(width=200)
    console.print(f"page cache before each timed process: {args.cache}")
    base = args.keep or Path(tempfile.mkdtemp(prefix="opdwatch-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    table = Table(title=f"opdwatch analyze vs DuckDB over the same files ({os.cpu_count()} cores)")
    for col in ("token rows", "steps", "write s", "opdwatch s", "opdwatch peak MB", "opdwatch M rows/s",
                "DuckDB s", "DuckDB peak MB", "opdwatch / DuckDB time", "same result", "pandas s", "pandas peak MB",
                "drill-down s (open, worst 5, their tokens)", "load (1 min)"):
        table.add_column(col, justify="right")
    timings: list[tuple[int, float]] = []
    here = Path(__file__).parent
    try:
        for rows in sizes:
            run = base / f"run-{rows}"
            t0 = time.perf_counter()
            if not (run / "manifest.json").exists():
                shutil.rmtree(run, ignore_errors=True)
                console.print(f"writing {rows:,} token rows ...")
                write_run(run, rows)
            write_s = time.perf_counter() - t0
            steps = len(list((run / "steps").glob("step=*")))
            ours_s, ours_mb, _ = measure([sys.executable, "-m", "opdwatch.cli", "analyze", str(run),
                                          "--json", "--no-report"], args.cache)
            timings.append((rows, ours_s))
            row = [f"{rows:,}", str(steps), f"{write_s:.1f}", f"{ours_s:.1f}", f"{ours_mb:,.0f}",
                   f"{rows / ours_s / 1e6:.2f}"]
            if args.no_duckdb:
                row += ["-"] * 4
            else:
                db_s, db_mb, db_out = measure([sys.executable, str(here / "duckdb_baseline.py"), str(run)], args.cache)
                row += [f"{db_s:.1f}", f"{db_mb:,.0f}", f"{ours_s / db_s:.2f}",
                        "yes" if _same(run, json.loads(db_out)) else "NO"]
            if args.pandas and rows <= 50_000_000:
                pd_s, pd_mb, pd_out = measure([sys.executable, "-c", PANDAS_BASELINE, str(run)], args.cache)
                same = _same(run, json.loads(pd_out))
                row += [f"{pd_s:.1f}{'' if same else ' (differs)'}", f"{pd_mb:,.0f}"]
            else:
                row += ["-", "-"]
            _, _, dd = measure([sys.executable, "-c", DRILLDOWN, str(run), str(2 * steps // 3 + 1)],
                               args.cache)
            d = json.loads(dd)
            row += [f"{d['open']:.2f}, {d['worst']:.2f}, {d['tokens']:.2f} ({d['rows']:,} rows)",
                    f"{os.getloadavg()[0]:.1f}"]
            table.add_row(*row)
            console.print(table)
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)
    if len(timings) >= 2:  # time = fixed (interpreter start, imports) + per-row cost: is it linear?
        x, y = np.array([t[0] for t in timings], float), np.array([t[1] for t in timings])
        slope, intercept = np.polyfit(x, y, 1)
        r2 = 1 - ((y - (slope * x + intercept)) ** 2).sum() / max(((y - y.mean()) ** 2).sum(), 1e-12)
        console.print(f"opdwatch time ~ {intercept:.2f} s + {slope * 1e7:.2f} s per 10M rows "
                      f"(linear fit, R^2 {r2:.3f})")


def _same(run: Path, pandas_out: dict[str, list[float | None]]) -> bool:
    """Per-step token and rollout series of opdwatch equal the baseline's (rel. 1e-9)."""
    from opdwatch.reader import open_run
    from opdwatch.series import step_series

    frame = step_series(open_run(run)).sort("step")
    for key, values in pandas_out.items():
        if key == "step":
            if frame["step"].to_list() != [int(v) for v in values]:
                return False
            continue
        ours = np.array([np.nan if v is None else v for v in frame[key].to_list()], dtype=float)
        theirs = np.array([np.nan if v is None else v for v in values], dtype=float)
        if not np.allclose(ours, theirs, rtol=1e-9, atol=1e-12, equal_nan=True):
            return False
    return True


if __name__ == "__main__":
    main()
