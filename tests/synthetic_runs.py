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

from dataclasses import replace
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


def thinned(settings: RecorderSettings | None = None, *, every_k: int = 2, fraction: float = 0.5) -> RecorderSettings:
    """Recorder settings that keep token rows only every ``every_k`` steps for ``fraction`` of rollouts."""
    return replace(settings or SETTINGS, token_every_k_steps=every_k, token_rollout_fraction=fraction)


def _batch(rng: np.random.Generator, count: int, budget: int, loop_share: float,
           base_truncation: float) -> dict[str, Any]:
    ids, s_lp, t_lp, texts, reasons, correct, ends = [], [], [], [], [], [], []
    for _ in range(count):
        loops = rng.random() < loop_share
        if loops:
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
        if loops:  # the teacher continues a loop happily once it has started
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
