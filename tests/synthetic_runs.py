"""Small real run directories with a known story, written through the Recorder (shared test helper).

    from tests.synthetic_runs import make_run
    run_dir = make_run(tmp_path / "opd", steps=40, collapse_at=20)      # collapses at step 20
    run_dir = make_run(tmp_path / "stable", steps=40)                   # noisy but stationary

Tokens are characters of a 40-symbol vocabulary (id 0 is EOS), so ``char_ends`` are exact and the
recorder's tail and n-gram flags behave as on a real character-level run. Healthy rollouts are
arithmetic-like text that ends with EOS (a small ``base_truncation`` share runs out of budget without
looping); from ``collapse_at`` on, a ``collapse_share`` of rollouts fall into a short loop and hit the
budget, the teacher likes the loop (higher teacher log-prob there, so repetitive tokens get larger
advantages, as in the paper's Fig. 4) and those rollouts are wrong. Validation batches every
``val_every`` steps follow the same rule. Trainer-style metrics (loss/*, control/*, time/*) are logged,
and a warning and an alarm event are written around the collapse.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from opdwatch.recorder import Recorder, RecorderSettings

VOCAB = "\x00" + "0123456789+-=.? abcdefghijklmnopqrstuvwx"[:39]  # id 0 = EOS (never in texts)
EOS_ID = 0
SETTINGS = RecorderSettings(tail_window=32, tail_threshold=0.5, ngram_n=4, loop_min_run=8)


def make_run(path: str | Path, *, steps: int, collapse_at: int | None = None, seed: int = 0,
             rollouts: int = 16, budget: int = 64, val_every: int = 5, val_rollouts: int = 8,
             base_truncation: float = 0.04, collapse_share: float = 0.85, settings: RecorderSettings | None = None,
             close: bool = True, with_events: bool = True, first_step: int = 1, ramp: int = 0) -> Path:
    """Write a run of ``steps`` train steps into ``path`` and return it. ``close=False`` leaves the run
    "running" (as if still being written). ``ramp`` > 0 makes the loop share rise linearly over that many
    steps from ``collapse_at`` instead of jumping."""
    path = Path(path)
    rng = np.random.default_rng(seed)
    settings = settings or SETTINGS
    rec = Recorder.create(path, config={"synthetic": True, "collapse_at": collapse_at, "seed": seed},
                          tokenizer_info={"eos_token_ids": [EOS_ID], "special_token_ids": [EOS_ID]},
                          settings=settings, run_id=path.name)
    for step in range(first_step, first_step + steps):
        share = 0.0
        if collapse_at is not None and step >= collapse_at:
            share = collapse_share * min(1.0, (step - collapse_at + 1) / (ramp + 1))
        batch = _batch(rng, rollouts, budget, share, base_truncation)
        metrics = {"loss/total": float(rng.normal(0.5, 0.05)), "loss/opd": float(rng.normal(0.4, 0.05)),
                   "control/beta": 0.1, "time/rollout": float(rng.uniform(0.1, 0.2))}
        rec.record_step(step, phase="train", **batch, metrics=metrics)
        if val_every and step % val_every == 0:
            rec.record_step(step, phase="val", **_batch(rng, val_rollouts, budget, share, base_truncation))
        if with_events and collapse_at is not None and step == collapse_at - 1:
            rec.event("warning", step=step, message="repetitive-token share rising")
        if with_events and collapse_at is not None and step == collapse_at + 1:
            rec.event("alarm", step=step, message="truncation collapse <script>alert(1)</script>")
    if close:
        rec.close("finished")
    return path


def make_profile_run(path: str | Path, truncation: np.ndarray | list[float], *, seed: int = 0, rollouts: int = 12,
                     budget: int = 32, exact: bool = False, close: bool = True, first_step: int = 1) -> Path:
    """Write a run whose train step ``first_step + i`` has truncation probability ``truncation[i]``: each
    rollout of the step loops until the budget (no EOS) with that probability, else ends with EOS
    (``exact``: round(p x rollouts) of them do, for a designed value such as a 0.33 spike). No validation
    and no events: the truncation story is all there is."""
    path = Path(path)
    rng = np.random.default_rng(seed)
    rec = Recorder.create(path, config={"synthetic": "profile", "seed": seed},
                          tokenizer_info={"eos_token_ids": [EOS_ID], "special_token_ids": [EOS_ID]},
                          settings=SETTINGS, run_id=path.name)
    for i, p in enumerate(np.clip(np.asarray(truncation, dtype=float), 0.0, 1.0)):
        loops = None
        if exact:
            loops = np.zeros(rollouts, dtype=bool)
            loops[rng.choice(rollouts, size=int(round(p * rollouts)), replace=False)] = True
        batch = _batch(rng, rollouts, budget, float(p), 0.0, loops=loops)
        rec.record_step(first_step + i, phase="train", **batch, metrics={"loss/total": float(rng.normal(0.5, 0.05))})
    if close:
        rec.close("finished")
    return path


@dataclass(frozen=True)
class Case:
    """A designed truncation story: the per-step probabilities, the onset step it was built with and the
    verdict label it must get (see :func:`case`)."""

    family: str
    seed: int
    truncation: np.ndarray     # probability per step, step 1 first
    onset: int | None          # designed onset step (first raised step), None for runs without one
    label: str
    close: bool = True         # False: the run is still being written
    exact: bool = False
    rollouts: int = 12
    episodes: tuple[tuple[int, int | None], ...] = ()  # designed collapse spans (first, last step; None: ongoing)

    def record(self, path: str | Path) -> Path:
        return make_profile_run(path, self.truncation, seed=1000 + self.seed, exact=self.exact, close=self.close,
                                rollouts=self.rollouts)


# The families of the verdict tests and of benchmarks/verdict_eval.py (seeds 0-2 tune, 3-9 are held out).
FAMILIES = ("abrupt", "recovery", "partial", "slow", "chronic", "spike", "noisy", "running")


def case(family: str, seed: int) -> Case:
    """Case ``seed`` of ``family`` (onset, levels and durations drawn from the seed):

    - abrupt: quiet 0.02-0.08, then 0.85-0.97 to the end (collapsed)
    - recovery: collapse for 8-15 steps, then back to the quiet level (collapsed, recovered)
    - partial: the demo's shape: a one-step ramp, 0.9-1.0 for 15-22 steps, a 5-step drift down, then a noisy
      0.2-0.6 regime (collapsed, recovering)
    - slow: ~200 quiet steps, a peak of 0.9+ for 8-12 steps, then chronic 0.3-0.6 (collapsed, recovering)
    - chronic: quiet, then 0.3-0.5 to the end (degraded)
    - spike: quiet with a single step at exactly 0.33 (healthy, no onset)
    - noisy: stationary, each step's probability uniform in 0.02-0.25 (healthy, no onset)
    - running: still being written; quiet, then 0.3 rising to 0.4 over its last 8-10 steps (inflating; 32
      rollouts a step, so that the observed rate stays below the collapse level it is designed to miss)

    Every case has 12 rollouts a step (running: 32).
    """
    rng = np.random.default_rng([FAMILIES.index(family), seed])

    def quiet(n: int) -> np.ndarray:
        return np.clip(rng.uniform(0.02, 0.08) + rng.normal(0, 0.015, n), 0, 1)

    def level(lo: float, hi: float, n: int) -> np.ndarray:
        return rng.uniform(lo, hi, n)

    if family == "abrupt":
        t0 = int(rng.integers(15, 31))
        p = np.r_[quiet(t0 - 1), level(0.85, 0.97, 50 - t0 + 1)]
        return Case(family, seed, p, t0, "collapsed", episodes=((t0, None),))
    if family == "recovery":
        t0, d = int(rng.integers(12, 23)), int(rng.integers(8, 16))
        p = np.r_[quiet(t0 - 1), level(0.85, 0.97, d), quiet(60 - t0 + 1 - d)]
        return Case(family, seed, p, t0, "collapsed, recovered", episodes=((t0, t0 + d - 1),))
    if family == "partial":
        t0, d = int(rng.integers(7, 16)), int(rng.integers(15, 23))
        drift = np.linspace(0.85, 0.45, 5)
        tail = 60 - (t0 - 1) - 1 - d - 5
        p = np.r_[quiet(t0 - 1), [rng.uniform(0.4, 0.6)], level(0.9, 1.0, d), drift, level(0.2, 0.6, tail)]
        # the drift's first four steps (0.85-0.55) are still at or above 0.5
        return Case(family, seed, p, t0, "collapsed, recovering", episodes=((t0, t0 + d + 4),))
    if family == "slow":
        t0, d = int(rng.integers(190, 211)), int(rng.integers(8, 13))
        p = np.r_[quiet(t0 - 1), [0.5], level(0.9, 1.0, d), level(0.3, 0.6, 30)]
        return Case(family, seed, p, t0, "collapsed, recovering", episodes=((t0, t0 + d),))
    if family == "chronic":
        t0 = int(rng.integers(15, 26))
        return Case(family, seed, np.r_[quiet(t0 - 1), level(0.3, 0.5, 60 - t0 + 1)], t0, "degraded")
    if family == "spike":
        p = quiet(60)
        p[int(rng.integers(15, 45))] = 4 / 12
        return Case(family, seed, p, None, "healthy", exact=True)
    if family == "noisy":
        return Case(family, seed, level(0.02, 0.25, 60), None, "healthy")
    if family == "running":
        n = int(rng.integers(8, 11))
        t0 = 30 - n + 1
        p = np.r_[quiet(t0 - 1), np.linspace(0.3, 0.4, n) + rng.normal(0, 0.02, n)]
        return Case(family, seed, p, t0, "inflating", close=False, rollouts=32)
    raise ValueError(f"unknown family {family!r}")


def recorded_case(root: str | Path, family: str, seed: int) -> tuple[Path, Case]:
    """:func:`case` recorded under ``root`` once (later calls with the same root reuse the directory)."""
    c = case(family, seed)
    path = Path(root) / f"{family}-{seed}"
    if not (path / "manifest.json").exists():
        c.record(path)
    return path, c


def thinned(settings: RecorderSettings | None = None, *, every_k: int = 2, fraction: float = 0.5) -> RecorderSettings:
    """Recorder settings that keep token rows only every ``every_k`` steps for ``fraction`` of rollouts."""
    return replace(settings or SETTINGS, token_every_k_steps=every_k, token_rollout_fraction=fraction)


def _batch(rng: np.random.Generator, count: int, budget: int, loop_share: float,
           base_truncation: float, *, loops: np.ndarray | None = None) -> dict[str, Any]:
    """``count`` rollouts; each loops with probability ``loop_share`` (or where ``loops`` says so)."""
    ids, s_lp, t_lp, texts, reasons, correct, ends = [], [], [], [], [], [], []
    for i in range(count):
        draw = rng.random() < loop_share
        loops_i = bool(loops[i]) if loops is not None else draw
        if loops_i:
            head = _healthy_text(rng)[: int(rng.integers(4, 12))]
            chunk = _healthy_text(rng)[: int(rng.integers(3, 7))]
            text = (head + chunk * budget)[:budget]
            reason, ok = "length", False
        elif rng.random() < base_truncation:  # long but not looping: runs out of budget
            text = "".join(rng.choice(list(VOCAB[1:]), size=budget))
            reason, ok = "length", False
        else:
            text = _healthy_text(rng)[: budget - 1]
            reason, ok = "eos", bool(rng.random() < 0.6)
        tok = np.array([VOCAB.index(ch) for ch in text] + ([EOS_ID] if reason == "eos" else []), dtype=np.int64)
        n = len(tok)
        student = rng.normal(-1.0, 0.3, size=n)
        teacher = rng.normal(-1.3, 0.5, size=n)
        if loops_i:  # the teacher continues a loop happily once it has started
            start = len(head) + len(chunk)
            teacher[start:] = rng.normal(-0.2, 0.1, size=max(0, n - start))
        ids.append(tok)
        s_lp.append(student.astype(np.float32))
        t_lp.append(teacher.astype(np.float32))
        texts.append(text)
        reasons.append(reason)
        correct.append(ok)
        ends.append(np.minimum(np.arange(1, n + 1), len(text)))
    return {"token_ids": ids, "student_logp": s_lp, "teacher_logp": t_lp, "texts": texts,
            "finish_reasons": reasons, "correct": correct, "char_ends": ends,
            "prompt_ids": [f"p{i // 4}" for i in range(count)], "sample_index": [i % 4 for i in range(count)]}


def _healthy_text(rng: np.random.Generator) -> str:
    parts = []
    value = int(rng.integers(0, 20))
    for _ in range(int(rng.integers(1, 5))):
        op, arg = ("+", int(rng.integers(0, 10))) if rng.random() < 0.5 else ("-", int(rng.integers(0, value + 1)))
        new = value + arg if op == "+" else value - arg
        parts.append(f"{value}{op}{arg}={new}.")
        value = new
    return " ".join(parts) + f" ans {value}"
