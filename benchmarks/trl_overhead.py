"""Per-step cost of opdwatch.integrations.trl.attach against the bare TRL trainer, side by side in one process.

    python benchmarks/trl_overhead.py [--steps 8] [--repeats 3] [--threads 1] [--kinds distillation,gkd,gold]

For each trainer class it builds two identical trainers (tests/trl_tiny.py: the tiny Qwen2 pair, same seed, so
both sample the same rollouts), one bare and one attached in warn mode, and trains them alternately
(bare, attached, bare, ...) ``--repeats`` times so that machine load hits both alike. A callback times every
optimizer step (on_step_begin -> on_step_end, plus the attached callback's own work on_step_end, which is where
the recording happens); the first step of each run is dropped (warm-up). Prints the median step time of each
arm and their difference, and, because on a shared machine that difference is noisy, the time spent in
opdwatch's own code per step measured directly in the attached arm: the side work of every hook
(``Capture.guard`` blocks: log-prob gathering, copying the batch) plus the callback's ``step_end`` and ``log``
(recording, detector, alerts, writes), and of that the recorder's own ``time/record``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.trl_tiny from a checkout


class _OwnTime:
    """Accumulates the wall time of opdwatch's side work in the attached arm (benchmark-only instrumentation)."""

    def __init__(self) -> None:
        self.seconds = 0.0  # all of opdwatch's side work
        self.hooks = 0.0  # of which inside the method wrappers (log-prob gathering, batch copies)

    def install(self) -> None:
        import contextlib

        from opdwatch.integrations import _trl_hooks, trl

        own = self
        guard = _trl_hooks.Capture.guard

        @contextlib.contextmanager
        def timed_guard(cap, where):
            t0 = time.perf_counter()
            with guard(cap, where):
                yield
            own.seconds += time.perf_counter() - t0
            own.hooks += time.perf_counter() - t0

        _trl_hooks.Capture.guard = timed_guard
        for name in ("step_end", "log"):
            original = getattr(trl.Attachment, name)

            def timed(self, *args, _original=original, **kwargs):
                t0 = time.perf_counter()
                try:
                    return _original(self, *args, **kwargs)
                finally:
                    own.seconds += time.perf_counter() - t0

            setattr(trl.Attachment, name, timed)


OWN = _OwnTime()


def _timed_run(kind: str, root: Path, steps: int, attached: bool) -> tuple[list[float], ...]:
    from transformers import TrainerCallback

    from opdwatch import open_run
    from opdwatch.integrations.trl import TRLWatch, attach
    from tests.trl_tiny import make_trainer

    times: list[float] = []
    own: list[float] = []
    hooks: list[float] = []
    begin: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            begin.append(time.perf_counter())
            own.append(OWN.seconds)
            hooks.append(OWN.hooks)

    class Stop(TrainerCallback):  # registered last: runs after opdwatch's on_step_end
        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter() - begin[-1])

    trainer = make_trainer(kind, root / "out", max_steps=steps, callbacks=[Clock()])
    if attached:
        attach(trainer, root / "run", TRLWatch(mode="warn"))
    trainer.add_callback(Stop())
    trainer.train()
    own.append(OWN.seconds)  # step i's own time: from its begin to the next step's begin (its on_log included)
    hooks.append(OWN.hooks)
    own_per_step = [b - a for a, b in zip(own[:-1], own[1:], strict=True)]
    hooks_per_step = [b - a for a, b in zip(hooks[:-1], hooks[1:], strict=True)]
    record = []
    if attached:
        steps_df = open_run(root / "run").steps().collect().sort("step")
        record = [float(v) for v in steps_df["time/record"].to_list()[1:]]
    return times[1:], own_per_step[1:], hooks_per_step[1:], record


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--kinds", default="distillation,gkd,gold")
    a = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import trl

    torch.set_num_threads(a.threads)
    OWN.install()
    print(f"TRL {trl.__version__}, torch {torch.__version__}, {a.threads} thread(s), {a.steps} steps x "
          f"{a.repeats} repeats per arm (first step of each run dropped)")
    print(f"{'trainer':<13} {'bare ms/step':>13} {'attached ms/step':>17} {'overhead ms':>12} {'overhead %':>11} "
          f"{'opdwatch ms':>12} {'of bare %':>10} {'hooks ms':>9} {'record ms':>10}")
    for kind in a.kinds.split(","):
        bare, attached, own, hook, record = [], [], [], [], []
        for r in range(a.repeats):
            with tempfile.TemporaryDirectory() as tmp:
                bare += _timed_run(kind, Path(tmp) / f"bare{r}", a.steps, attached=False)[0]
                t, o, h, rec = _timed_run(kind, Path(tmp) / f"att{r}", a.steps, attached=True)
                attached, own, hook, record = attached + t, own + o, hook + h, record + rec
        mb, ma, mo, mh, mr = (statistics.median(x) * 1e3 for x in (bare, attached, own, hook, record))
        print(f"{kind:<13} {mb:>13.1f} {ma:>17.1f} {ma - mb:>12.1f} {100 * (ma - mb) / mb:>10.1f}% "
              f"{mo:>12.1f} {100 * mo / mb:>9.1f}% {mh:>9.1f} {mr:>10.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
