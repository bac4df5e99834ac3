"""What watching costs per step: the watch (detector, policy, event write) and the recorder's fixed per-step
cost apart from its per-row cost, against a CPU demo step and an estimated 7B step.

    python benchmarks/watch_overhead.py [--steps 2000] [--demo-steps 5]

* watch: ``Detector.update``, ``InterventionPolicy.decide`` and the whole ``Watcher.step`` (warn mode, the
  guards included) over a simulated healthy run (no state changes: the per-step hot path), then the cost of
  one event write (``Recorder.event``: JSON line, fsync) and of building one alert (recommendation, the worst
  rollouts read back from the run);
* recorder: ``record_step`` timed at several batch sizes (token rows per step), fitted by least squares as
  ``seconds = fixed + per_row * rows``: the fixed part is paid every step whatever the batch (Parquet files,
  manifest rewrite), the per-row part scales with the tokens;
* references: the CPU demo's step (``--demo-steps``: steps of the `demo_opd` preset timed between the loop's
  step hooks, models demo-shaped, see :func:`bench_demo_step`) and an estimated 7B step (see ``SEVEN_B``).
One core (OMP/BLAS/polars threads pinned to 1); fixed seeds.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("POLARS_MAX_THREADS", "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from opdwatch.alerts.recommend import AlertContext, build_alert  # noqa: E402
from opdwatch.detector.detector import Detector, DetectorState, Evidence  # noqa: E402
from opdwatch.detector.policy import InterventionPolicy  # noqa: E402
from opdwatch.detector.settings import PolicySettings, WatchConfig  # noqa: E402
from opdwatch.detector.simulate import TraceSpec, simulate  # noqa: E402
from opdwatch.detector.watcher import Watcher  # noqa: E402
from opdwatch.recorder import Recorder, RecorderSettings  # noqa: E402

# The 7B estimate: the paper's GPU layout with a 7B student and a 7B teacher, 64 prompts x 4 rollouts of ~4k
# tokens (1M tokens per step) on 8 GPUs of ~1e15 dense bf16 FLOP/s. Student update fwd+bwd 6*N*T, teacher and
# reference scoring 2*N*T each, generation 2*N*T at a far lower utilisation (memory-bound decode).
SEVEN_B = {"params": 7e9, "tokens": 64 * 4 * 4096, "gpus": 8, "flops_per_gpu": 1e15, "mfu_train": 0.4,
           "mfu_decode": 0.1}


def seven_b_step_seconds(c: dict[str, float] = SEVEN_B) -> float:
    flops_train = (6 + 2 + 2) * c["params"] * c["tokens"]
    flops_decode = 2 * c["params"] * c["tokens"]
    peak = c["gpus"] * c["flops_per_gpu"]
    return flops_train / (peak * c["mfu_train"]) + flops_decode / (peak * c["mfu_decode"])


def per_call(fn, n: int) -> tuple[float, float]:
    """Median wall-clock and median CPU seconds (this thread) of ``fn(i)`` over n calls. On a shared machine
    the wall clock includes waiting for a core; the CPU time is the work itself (fsync waits are not in it)."""
    wall, cpu = [], []
    for i in range(n):
        t0, c0 = time.perf_counter(), time.thread_time()
        fn(i)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def bench_watch(steps: int, root: Path) -> dict[str, tuple[float, float]]:
    rows = simulate(TraceSpec(steps=steps, onset=None, seed=0))  # stable: the hot path, no state changes
    det = Detector()
    out = {"detector.update": per_call(lambda i: det.update(*rows[i]), steps)}
    det2, pol = Detector(), InterventionPolicy(PolicySettings())
    states = [det2.update(*r) for r in rows]
    out["policy.decide"] = per_call(lambda i: pol.decide(states[i], states[i].step, beta=0.0, alpha=0.0), steps)
    rec = Recorder.create(root / "watch")
    watcher = Watcher(WatchConfig(mode="warn"), recorder=rec, run_name="bench")
    out["Watcher.step (warn, guarded)"] = per_call(lambda i: watcher.step(*rows[i]), steps)
    out["Recorder.event (one line, fsync)"] = per_call(
        lambda i: rec.event("info", step=i, message="benchmark event", value=float(i)), min(steps, 500))
    watcher.close()
    rec.close()
    return out


def bench_alert(root: Path, n: int = 20) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    rec = Recorder.create(root / "alert", settings=RecorderSettings(tail_window=64, tail_threshold=0.5))
    ids = [rng.integers(3, 1000, size=128) for _ in range(64)]
    rec.record_step(1, token_ids=ids, finish_reasons=["length"] * 64, texts=["x" * 200] * 64,
                    student_logp=[rng.normal(-1, 0.3, 128) for _ in ids], teacher_logp=[rng.normal(-1, 0.5, 128)
                                                                                      for _ in ids])
    ev = (Evidence("rep_share", 0.2, 0.03, 0.01, 9.0, 12.0, "up", True),)
    state = DetectorState(step=1, level="alarm", previous="warning", evidence=ev, reason="bench")
    ctx = AlertContext(name="bench", run_dir=rec.run_dir, config={"opd": {"lr": 3e-3}})
    result = per_call(lambda i: build_alert(state, ctx, mode="warn", decisions=[], acted=[], beta=0.0, alpha=0.0,
                                            policy=PolicySettings(), last_ok_step=0), n)
    rec.close()
    return result


def bench_recorder(root: Path, sizes: list[tuple[int, int]], steps: int) -> list[tuple[int, float, float]]:
    """(token rows per step, median wall and CPU seconds of record_step) per (rollouts, tokens per rollout)."""
    out = []
    for rollouts, length in sizes:
        rng = np.random.default_rng(0)
        rec = Recorder.create(root / f"rec-{rollouts}x{length}",
                              settings=RecorderSettings(tail_window=64, tail_threshold=0.5))
        ids = [rng.integers(3, 32_000, size=length) for _ in range(rollouts)]
        slp = [rng.normal(-1, 0.3, size=length).astype(np.float32) for _ in range(rollouts)]
        tlp = [rng.normal(-1, 0.5, size=length).astype(np.float32) for _ in range(rollouts)]
        texts = [" ".join(map(str, r[:64])) for r in ids]
        reasons = ["eos"] * rollouts
        batch = {"token_ids": ids, "student_logp": slp, "teacher_logp": tlp, "finish_reasons": reasons,
                 "texts": texts}
        rec.record_step(0, **batch)  # the first call pays one-time costs (imports, directories)
        wall, cpu = per_call(lambda i, rec=rec, batch=batch: rec.record_step(i + 1, **batch), steps)
        rec.close()
        out.append((rollouts * length, wall, cpu))
    return out


def bench_demo_step(steps: int, root: Path) -> tuple[float, float]:
    """Median wall and CPU seconds (all threads) of an OPD step of the `demo_opd` preset (2 threads, 16 prompts x
    4 rollouts, 128-token budget), steps 2.. of a short run, with the demo's own shipped models (no build)."""
    from opdwatch.trainer.config import load_config
    from opdwatch.trainer.loop.loop import train

    marks: list[tuple[float, float]] = []

    def mark(step: int, summary: dict[str, float], controller: object) -> None:
        marks.append((time.perf_counter(), time.process_time()))

    config = load_config("demo_opd", [f"opd.steps={steps + 1}", "val.every=0", "checkpoint.every=0",
                                      "run.progress=false", f"run.output_dir={root}",
                                      f"models.cache_dir={root}/models"])
    train(config, on_step=mark)
    wall = [b[0] - a[0] for a, b in zip(marks, marks[1:])]
    cpu = [b[1] - a[1] for a, b in zip(marks, marks[1:])]
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=2000, help="steps for the watch timings")
    ap.add_argument("--recorder-steps", type=int, default=15, help="steps per batch size for the recorder fit")
    ap.add_argument("--demo-steps", type=int, default=0,
                    help="also time this many OPD steps of the demo_opd preset (needs the trainer extra)")
    args = ap.parse_args()
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with console.status("timing the watch"):
            watch = bench_watch(args.steps, root)
            alert = bench_alert(root)
        with console.status("timing the recorder at several batch sizes"):
            sizes = [(2, 8), (8, 64), (64, 128), (64, 512), (128, 1024)]
            rec = bench_recorder(root, sizes, args.recorder_steps)
        demo = None
        if args.demo_steps:
            with console.status(f"timing {args.demo_steps} steps of demo_opd"):
                demo = bench_demo_step(args.demo_steps, root / "demo")
    rows = np.array([r for r, _, _ in rec], dtype=float)
    per_row, fixed = np.polyfit(rows, np.array([w for _, w, _ in rec]), 1)
    per_row_cpu, fixed_cpu = np.polyfit(rows, np.array([c for _, _, c in rec]), 1)

    t = Table(title=f"watch, per step (median of {args.steps} steps)")
    for col in ("part", "wall µs", "CPU µs"):
        t.add_column(col, justify="right" if col != "part" else "left")
    for name, (wall, cpu) in [*watch.items(), ("build_alert (on escalation only)", alert)]:
        t.add_row(name, f"{wall * 1e6:.1f}", f"{cpu * 1e6:.1f}")
    console.print(t)
    r = Table(title="Recorder.record_step (median), fit: seconds = fixed + per_row * rows")
    for col in ("token rows per step", "wall ms", "CPU ms", "fit wall ms", "fit CPU ms"):
        r.add_column(col, justify="right")
    for n, w, c in rec:
        r.add_row(f"{n:,}", f"{w * 1e3:.2f}", f"{c * 1e3:.2f}", f"{(fixed + per_row * n) * 1e3:.2f}",
                  f"{(fixed_cpu + per_row_cpu * n) * 1e3:.2f}")
    console.print(r)
    console.print(f"recorder fixed cost per step: {fixed * 1e3:.2f} ms wall, {fixed_cpu * 1e3:.2f} ms CPU; per token "
                  f"row: {per_row * 1e9:.0f} ns wall, {per_row_cpu * 1e9:.0f} ns CPU")

    step_watch = watch["Watcher.step (warn, guarded)"][0]
    refs = [("estimated 7B step", seven_b_step_seconds())]
    if demo is not None:
        refs.insert(0, ("CPU demo step, measured (wall)", demo[0]))
        console.print(f"CPU demo step: {demo[0]:.2f} s wall, {demo[1]:.2f} s CPU (2 threads)")
    s = Table(title="against a training step (wall-clock medians)")
    for col in ("step", "seconds", "watch per step", "recorder fixed per step"):
        s.add_column(col, justify="right")
    for name, sec in refs:
        s.add_row(name, f"{sec:.2f}", f"{step_watch * 1e6:.0f} µs = {step_watch / sec:.1e} of it",
                  f"{fixed * 1e3:.1f} ms = {fixed / sec:.1e} of it")
    console.print(s)
    console.print(f"7B estimate: {SEVEN_B}; load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
