"""The in-run probe: every `probe.every` steps, the loop incentive of the student as it is now (docs/probe.md).

A fixed probe set (counterfactual loops of the golden solutions of the first `probe.num_prompts` validation
prompts, opdwatch.probe) is built once; the teacher's scores of it are computed once (it is frozen); each probe
scores it with the current student and records `probe/...` step metrics (opdwatch.probe.summary), each also
relative to step 0 (`..._delta`). Step 0 is the frozen initial student (the reference, when it is one), so a
resumed run keeps the same baseline without saving it.

It never changes the training trajectory: scoring runs under no_grad, puts the model back in its train/eval
mode, draws no random numbers, and runs inside `torch.random.fork_rng` besides, so the global RNG state is the
same after it whatever a model does (tests/test_probe_inrun.py: same seed with and without it, identical weights).
Rank 0 only: it reads the unsharded rollout copy under FSDP.
"""

from __future__ import annotations

import time

import torch

from opdwatch.probe.api import ProbeSet, make_probe_set, probe_metrics, teacher_scores
from opdwatch.probe.counterfactual import ChunkSpec
from opdwatch.probe.run import delimiter_ids
from opdwatch.probe.summary import with_deltas
from opdwatch.trainer.config import TrainConfig
from opdwatch.trainer.data.task import prompt_ids, solution_ids
from opdwatch.trainer.loop.components import Components

PROBE_TIME = "time/probe"  # seconds spent in one probe (the cost, as a fraction of time/rollout + score + update)


def build_probe_set(config: TrainConfig, components: Components) -> ProbeSet:
    tok, p = components.tokenizer, config.probe
    examples = components.splits.val[: p.num_prompts]
    stops = set(components.mapping.student_stop_ids) if components.mapping else {tok.eos_token_id}
    responses = [[t for t in solution_ids(tok, ex.solution) if t not in stops] for ex in examples]
    spec = ChunkSpec(mode=p.chunk, window=p.window,
                     delimiters=delimiter_ids(tok, p.chunk) if p.chunk != "window" else frozenset())
    return make_probe_set([prompt_ids(tok, ex.question) for ex in examples], responses, eos_id=tok.eos_token_id,
                          spec=spec, copies=p.copies, mapping=components.mapping)


class InRunProbe:
    """`probe(step)` -> the step's probe metrics ({} on steps it skips)."""

    def __init__(self, config: TrainConfig, components: Components):
        self.every = config.probe.every
        self.batch_size = config.probe.batch_size
        self.components = components
        with torch.random.fork_rng(devices=[]):
            self.probe_set = build_probe_set(config, components)
            self.teacher_cache = teacher_scores(components.teacher, self.probe_set, batch_size=self.batch_size)
            # step 0: the frozen initial student when the reference is it (also after a resume), else the student
            # as the run starts
            initial = components.reference if config.models.reference == "student" else components.rollout_student
            self.baseline = self._metrics(initial)

    def _metrics(self, student: torch.nn.Module) -> dict[str, float]:
        return probe_metrics(student, self.components.teacher, self.probe_set, teacher_cache=self.teacher_cache,
                             batch_size=self.batch_size)

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def __call__(self, step: int) -> dict[str, float]:
        if not self.due(step):
            return {}
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[]):  # belt and braces: scoring draws no random numbers anyway
            metrics = with_deltas(self._metrics(self.components.rollout_student), self.baseline)
        return {**metrics, PROBE_TIME: time.perf_counter() - t0}
