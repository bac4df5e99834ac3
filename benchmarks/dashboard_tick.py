"""How long one dashboard refresh takes on a big run: 2,000 steps, 20M token rows (target: < 200 ms).

    python benchmarks/dashboard_tick.py [--steps 2000] [--rows-per-step 10000] [--run-dir DIR] [--threads 1]

Records a run with the Recorder (``--run-dir`` keeps it for the next invocation; an existing complete
run there is reused), opens it as the dashboard does (:class:`opdwatch.live.LiveRun`), then appends steps
while it is open and times a tick with k = 0, 1 and 10 new steps, side by side with the cold load:

- ``data``: ``LiveRun.tick()`` plus the updated ``series()`` and ``lengths()`` frames: what the
  incremental reader costs (the design target);
- ``page``: the run page's whole refresh callback (tick, detector, verdict, the five shared plotly
  figures, the event table) as the browser's timer calls it.

For scale, the last row is a full re-read (``step_series(open_run(path))``), what a refresh would cost
without the incremental reader. Median of several repeats; one thread by default (the machine is shared).
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":  # thread pools read these at import
    _threads = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv else "1"
    os.environ.setdefault("POLARS_MAX_THREADS", _threads)
    os.environ.setdefault("OMP_NUM_THREADS", _threads)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import Progress  # noqa: E402
from rich.table import Table  # noqa: E402

from opdwatch.live import LiveRun  # noqa: E402
from opdwatch.reader import open_run  # noqa: E402
from opdwatch.recorder import Recorder, RecorderSettings  # noqa: E402
from opdwatch.series import step_series  # noqa: E402

TICK_KS = (0, 1, 10)
REPEATS = {0: 10, 1: 5, 10: 3}  # appended steps: 5 * 1 + 3 * 10 = 35
EOS = 2
ROLLOUTS = 40


class Writer:
    """Records synthetic steps of ~rows_per_step tokens: healthy until half-way, then a quarter loops."""

    def __init__(self, run_dir: Path, rows_per_step: int, seed: int = 0, resume_from: int | None = None) -> None:
        settings = RecorderSettings(tail_window=256, tail_threshold=0.3)
        if resume_from is None:
            self.rec = Recorder.create(run_dir, tokenizer_info={"eos_token_ids": [EOS]}, settings=settings)
        else:
            self.rec = Recorder.create(run_dir, tokenizer_info={"eos_token_ids": [EOS]}, settings=settings,
                                       resume_from_step=resume_from)
        self.rng = np.random.default_rng(seed)
        self.healthy = self._batch(rows_per_step, loop_share=0.0)
        self.collapsed = self._batch(rows_per_step, loop_share=0.25)

    def _batch(self, rows: int, loop_share: float) -> dict:
        rng = self.rng
        lengths = np.full(ROLLOUTS, rows // ROLLOUTS)
        lengths[: rows - lengths.sum()] += 1
        ids, texts, reasons = [], [], []
        for i, n in enumerate(lengths):
            if i < loop_share * ROLLOUTS:
                seq, reason = np.resize(rng.integers(10, 32_000, size=7), n), "length"
            else:
                seq, reason = np.concatenate([rng.integers(10, 32_000, size=n - 1), [EOS]]), "eos"
            ids.append(seq)
            texts.append(" ".join(f"t{t}" for t in seq[:300]))
            reasons.append(reason)
        return {"token_ids": ids, "texts": texts, "finish_reasons": reasons,
                "student_logp": [rng.normal(-1.0, 0.5, size=len(x)).astype(np.float32) for x in ids],
                "teacher_logp": [rng.normal(-1.2, 0.7, size=len(x)).astype(np.float32) for x in ids],
                "prompt_ids": [f"p{i // 4}" for i in range(ROLLOUTS)], "sample_index": [i % 4 for i in range(ROLLOUTS)]}

    def step(self, step: int, total: int) -> None:
        batch = self.collapsed if step >= total // 2 else self.healthy
        self.rec.record_step(step, **batch, metrics={"loss/total": 0.5})
        if step % 50 == 0:
            self.rec.event("info", step=step, message="checkpoint-ish")


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--rows-per-step", type=int, default=10_000)
    ap.add_argument("--run-dir", type=Path, default=None, help="keep the recorded run here (reused if present)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    console = Console()
    appended = sum(k * REPEATS[k] for k in TICK_KS)
    base = args.steps - appended
    tmp = None
    if args.run_dir is None:
        tmp = tempfile.TemporaryDirectory()
        run_dir = Path(tmp.name) / "run"
    else:
        run_dir = args.run_dir
    writer = prepare(run_dir, base, args, console)

    from flask import Flask  # a request context for the page callback (dash brings flask)

    from opdwatch.dashboards.app import create_app
    app = create_app(run_dir.parent, refresh_ms=2000)
    page = sys.modules["pages.run"]  # the run page module as Dash loaded it
    name = run_dir.name
    assert isinstance(app.server, Flask)

    results: dict[str, tuple[float, float]] = {}
    with app.server.test_request_context():
        live_holder: dict[str, LiveRun] = {}

        def cold_data() -> None:
            live_holder["live"] = live = LiveRun(run_dir)
            live.series()
            live.lengths()

        cold = timed(cold_data)
        tab: dict = {}  # what one browser tab holds: the store of the last refresh it received

        def cold_refresh() -> None:  # the registry opens its own LiveRun
            tab["shown"] = page.refresh(0, name, None)[-1]

        cold_page = timed(cold_refresh)
        results["cold load"] = (cold, cold_page)
        live = live_holder["live"]
        next_step = base
        for k in TICK_KS:
            data_ms, page_ms = [], []
            for _ in range(REPEATS[k]):
                for _ in range(k):
                    writer.step(next_step, args.steps)
                    next_step += 1

                def data_tick() -> None:
                    live.tick()
                    live.series()
                    live.lengths()

                data_ms.append(timed(data_tick))
                # The tab has the previous version on screen; with k = 0 nothing is new and nothing is sent,
                # otherwise only the new points are (a Patch) unless events or the onset changed.
                page_ms.append(timed(lambda: _page_refresh(page, name, tab)))
            results[f"tick, k = {k} new steps"] = (statistics.median(data_ms), statistics.median(page_ms))
        full = timed(lambda: step_series(open_run(run_dir)))
    writer.rec.close()

    token_rows = sum(pq_rows(p) for p in (run_dir / "tokens").rglob("*.parquet"))
    steps = len(list((run_dir / "steps").iterdir()))
    table = Table(title=f"dashboard refresh on {steps:,} steps, {token_rows:,} token rows "
                  f"({args.threads} thread{'s' if args.threads > 1 else ''})")
    table.add_column("what")
    table.add_column("data: tick + series (ms)", justify="right")
    table.add_column("page: whole refresh callback (ms)", justify="right")
    for key, (data, pg) in results.items():
        table.add_row(key, f"{data:,.1f}", f"{pg:,.1f}")
    table.add_row("full re-read: step_series(open_run)", f"{full:,.1f}", "-")
    console.print(table)
    console.print(f"target: a refresh under 200 ms; ticks are medians of {REPEATS} repeats")
    if tmp is not None:
        tmp.cleanup()


def _page_refresh(page, name: str, tab: dict) -> None:  # noqa: ANN001 - the page module
    from dash.exceptions import PreventUpdate

    with contextlib.suppress(PreventUpdate):  # k = 0: nothing new, nothing sent
        tab["shown"] = page.refresh(1, name, tab["shown"])[-1]


def pq_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.read_metadata(path).num_rows


def prepare(run_dir: Path, base: int, args: argparse.Namespace, console: Console) -> Writer:
    """A run of ``base`` steps in ``run_dir`` (recorded now, or reused), and a writer to append more."""
    existing = sorted(int(p.name[5:]) for p in (run_dir / "steps").glob("step=*")) if run_dir.exists() else []
    if existing and existing[-1] >= base - 1:
        console.print(f"reusing {run_dir} (dropping steps after {base - 1})")
        return Writer(run_dir, args.rows_per_step, resume_from=base - 1)
    if run_dir.exists() and any(run_dir.iterdir()):
        raise SystemExit(f"{run_dir} holds an incomplete run: remove it first")
    writer = Writer(run_dir, args.rows_per_step)
    with Progress(console=console) as progress:
        task = progress.add_task(f"recording {base} steps x {args.rows_per_step:,} token rows", total=base)
        for step in range(base):
            writer.step(step, args.steps)
            progress.advance(task)
    return writer


if __name__ == "__main__":
    main()
