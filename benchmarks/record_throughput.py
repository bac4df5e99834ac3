"""Token rows per second of Recorder.record_step, derived fields and Parquet writes included.

    python benchmarks/record_throughput.py [--rows 1000000] [--rollout-len 256] [--steps 4]

Simulates the paper's layout (rollouts of up to --rollout-len tokens, some looping) and records
--rows token rows per step for --steps steps, on one core (OMP/BLAS threads pinned to 1), then
prints rows/s and the on-disk bytes per million token rows.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("POLARS_MAX_THREADS", "1")

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import track  # noqa: E402
from rich.table import Table  # noqa: E402

from opdwatch.recorder import Recorder, RecorderSettings  # noqa: E402


def make_batch(rng: np.random.Generator, rows: int, rollout_len: int, vocab: int = 32_000):
    lengths = rng.integers(rollout_len // 4, rollout_len + 1, size=rows // (rollout_len // 2) + 8)
    lengths = lengths[np.cumsum(lengths) <= rows]
    lengths[-1] += rows - lengths.sum()
    ids, texts, reasons = [], [], []
    for i, n in enumerate(lengths):
        if i % 5 == 0:  # a looping rollout that hit the budget
            chunk = rng.integers(0, vocab, size=7)
            seq = np.resize(chunk, n)
            reasons.append("length")
        else:
            seq = rng.integers(0, vocab, size=n)
            reasons.append("eos")
        ids.append(seq)
        texts.append(" ".join(f"t{t}" for t in seq[: min(n, 400)]))
    s = [rng.normal(-1.0, 0.5, size=len(x)).astype(np.float32) for x in ids]
    t = [rng.normal(-1.2, 0.7, size=len(x)).astype(np.float32) for x in ids]
    return ids, s, t, texts, reasons


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--rollout-len", type=int, default=256)
    ap.add_argument("--steps", type=int, default=4)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    batch = make_batch(rng, args.rows, args.rollout_len)
    with tempfile.TemporaryDirectory() as tmp:
        rec = Recorder.create(Path(tmp) / "run", tokenizer_info={"eos_token_ids": [2]},
                              settings=RecorderSettings(tail_window=256, tail_threshold=0.3))
        ids, s, t, texts, reasons = batch
        times = []
        for step in track(range(args.steps), description="recording"):
            t0 = time.perf_counter()
            rec.record_step(step, token_ids=ids, student_logp=s, teacher_logp=t, finish_reasons=reasons,
                            texts=texts, prompt_ids=[str(i // 4) for i in range(len(ids))])
            times.append(time.perf_counter() - t0)
        rec.close()
        token_bytes = sum(p.stat().st_size for p in (Path(tmp) / "run" / "tokens").rglob("*.parquet"))
    rows = sum(len(x) for x in batch[0])
    best, median = min(times), float(np.median(times))
    table = Table(title=f"Recorder throughput ({rows:,} token rows/step, {len(batch[0]):,} rollouts, "
                  f"pyarrow {pa.__version__})")
    for col in ("metric", "value"):
        table.add_column(col)
    table.add_row("token rows/s (median step)", f"{rows / median:,.0f}")
    table.add_row("token rows/s (best step)", f"{rows / best:,.0f}")
    table.add_row("seconds per step (median)", f"{median:.3f}")
    table.add_row("disk MB per 1M token rows (zstd)", f"{token_bytes / (rows * args.steps) * 1e6 / 1e6:.1f}")
    Console().print(table)


if __name__ == "__main__":
    main()
