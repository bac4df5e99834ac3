"""Write a real run directory (through the Recorder) whose rollouts fall into loops from a known step.

Used by the detector tests and the benchmark's "synthetic recorder" corpus: unlike the step-metric traces of
:mod:`opdwatch.detector.simulate`, every metric here is derived by the recorder itself from token ids,
log-probs and finish reasons, so the detector sees exactly what a trainer would give it.

Healthy rollouts are random token strings of 18-45 tokens ending in EOS. From ``onset - precursor_lead`` on,
a growing share of rollouts repeat a chunk a few times before still stopping (the precursor: repetitive
tokens, and an EOS the teacher now dislikes); from around ``onset`` on, a growing share loop until the
budget without EOS. Teacher log-probs favour continuing a loop (copy prior), as in the CPU study.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from opdwatch.recorder import Recorder, RecorderSettings

EOS = 1
VOCAB = 40


def _rollout(rng: np.random.Generator, kind: str, budget: int) -> tuple[list[int], str]:
    if kind == "healthy":
        return [int(t) for t in rng.integers(2, VOCAB, size=int(rng.integers(18, 46)))] + [EOS], "eos"
    prefix = [int(t) for t in rng.integers(2, VOCAB, size=int(rng.integers(6, 16)))]
    chunk = [int(t) for t in rng.integers(2, VOCAB, size=int(rng.integers(3, 8)))]
    if kind == "precursor":  # repeats a few times, then stops
        body = prefix + chunk * int(rng.integers(3, 6))
        return body[: budget - 1] + [EOS], "eos"
    body = prefix + chunk * (budget // len(chunk) + 1)  # loop: runs out of budget
    return body[:budget], "length"


def write_synthetic_run(run_dir: str | Path, *, steps: int = 60, onset: int | None = 40, width: float = 1.5,
                        precursor_lead: int = 6, rollouts: int = 32, budget: int = 128, seed: int = 0,
                        start_step: int = 1) -> Path:
    """Record ``steps`` train steps into ``run_dir`` (which must not hold a run). ``onset=None``: stable."""
    rng = np.random.default_rng(seed)
    settings = RecorderSettings(tail_window=64, tail_threshold=0.5, ngram_n=5, loop_min_run=32)
    rec = Recorder.create(run_dir, config={"synthetic": True, "onset": onset, "seed": seed},
                          tokenizer_info={"eos_token_ids": [EOS]}, settings=settings)
    for step in range(start_step, start_step + steps):
        if onset is None:
            p_loop = p_pre = 0.0
        else:
            p_loop = 0.95 / (1.0 + math.exp(-(step - onset) / width))
            p_pre = 0.35 / (1.0 + math.exp(-(step - (onset - precursor_lead)) / 1.0))
        p_loop = max(p_loop, 0.005)
        ids, reasons, texts, s_lp, t_lp = [], [], [], [], []
        for _ in range(rollouts):
            u = rng.random()
            kind = "loop" if u < p_loop else "precursor" if u < p_loop + p_pre * (1 - p_loop) else "healthy"
            toks, reason = _rollout(rng, kind, budget)
            n = len(toks)
            student = rng.normal(-1.1, 0.4, n)
            teacher = rng.normal(-1.3, 0.5, n)
            if kind != "healthy":  # the copy prior: once a chunk repeats, the teacher expects more of it
                teacher[16:] = rng.normal(-0.3, 0.2, max(n - 16, 0))
                student[16:] = rng.normal(-0.8, 0.3, max(n - 16, 0))
            if reason == "eos":
                teacher[-1] = rng.normal(-4.0 if kind == "precursor" else -1.0, 0.5)
            ids.append(np.asarray(toks, dtype=np.int64))
            reasons.append(reason)
            texts.append("".join(chr(ord("a") + (t - 2) % 26) for t in toks if t != EOS))
            s_lp.append(student.astype(np.float32))
            t_lp.append(teacher.astype(np.float32))
        rec.record_step(step, token_ids=ids, finish_reasons=reasons, texts=texts, student_logp=s_lp,
                        teacher_logp=t_lp)
    rec.close("finished")
    return Path(run_dir)
