"""The in-run probe: every `probe.every` steps, the loop incentive of the student as it is now (docs/probe.md).

A fixed probe set (counterfactual loops of the golden solutions of the first `probe.num_prompts` validation
prompts, opdwatch.probe) is built once; the teacher's scores of it are computed once (it is frozen); each probe
scores it with the current student and records `probe/...` step metrics (opdwatch.probe.summary), each also
relative to step 0 (`..._delta`); with `probe.middle` a second set of mid-solution loops is scored too, under
`probe/middle/...`. Step 0 is the frozen initial student (the reference, when it is one), so a
resumed run keeps the same baseline without saving it.

It never changes the training trajectory: scoring runs under no_grad, puts the model back in its train/eval
mode, draws no random numbers, and runs inside `torch.random.fork_rng` besides, so the global RNG state is the
same after it whatever a model does (tests/test_probe_inrun.py: same seed with and without it, identical weights).
Rank 0 only: it reads the unsharded rollout copy under FSDP.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from opdwatch.probe.api import ProbeSet, Scores, make_probe_set, probe_metrics, teacher_scores
from opdwatch.probe.counterfactual import ChunkSpec, middle_prefix
from opdwatch.probe.run import delimiter_ids
from opdwatch.probe.summary import in_family, with_deltas
from opdwatch.trainer.config import TrainConfig
from opdwatch.trainer.data.task import prompt_ids, solution_ids
from opdwatch.trainer.loop.components import Components

PROBE_TIME = "time/probe"  # seconds spent in one probe (the cost, as a fraction of time/rollout + score + update)


def build_probe_sets(config: TrainConfig, components: Components) -> dict[str, ProbeSet]:
    """The fixed probe sets by key family: "" = loops of each golden solution's last chunk (`probe/...`); with
    `probe.middle` also "middle" = loops of the chunk ending at the sentence end nearest the solution's middle
    (`probe/middle/...`). The delimiter ids come from one decode of the vocabulary."""
    tok, p = components.tokenizer, config.probe
    examples = components.splits.val[: p.num_prompts]
    stops = set(components.mapping.student_stop_ids) if components.mapping else {tok.eos_token_id}
    responses = [[t for t in solution_ids(tok, ex.solution) if t not in stops] for ex in examples]
    needs_ends = p.chunk != "window" or p.middle
    delimiters = delimiter_ids(tok, "sentence" if p.chunk == "window" else p.chunk) if needs_ends else frozenset()
    spec = ChunkSpec(mode=p.chunk, window=p.window, delimiters=delimiters if p.chunk != "window" else frozenset())
    prompts = [prompt_ids(tok, ex.question) for ex in examples]
    variants = {"": responses}
    if p.middle:  # window mode has no delimiters of its own: cut at a sentence end
        variants["middle"] = [list(middle_prefix(r, delimiters)) if r else r for r in responses]
    return {family: make_probe_set(prompts, rs, eos_id=tok.eos_token_id, spec=spec, copies=p.copies,
                                   mapping=components.mapping) for family, rs in variants.items()}


@dataclass(frozen=True)
class _Family:
    """One fixed probe set, its cached teacher scores and its step-0 metrics, under a key family."""

    family: str  # "" = the probe/... keys; "middle" = probe/middle/...
    probe_set: ProbeSet
    teacher_cache: Scores  # the teacher's scores of probe_set, computed once
    baseline: dict[str, float]


class InRunProbe:
    """`probe(step)` -> the step's probe metrics ({} on steps it skips)."""

    def __init__(self, config: TrainConfig, components: Components):
        self.every = config.probe.every
        self.batch_size = config.probe.batch_size
        self.components = components
        # step 0: the frozen initial student when the reference is it (also after a resume), else the student
        # as the run starts
        initial = components.reference if config.models.reference == "student" else components.rollout_student
        self.families: list[_Family] = []
        with torch.random.fork_rng(devices=[]):
            for family, probe_set in build_probe_sets(config, components).items():
                cache = teacher_scores(components.teacher, probe_set, batch_size=self.batch_size)
                baseline = probe_metrics(initial, components.teacher, probe_set, teacher_cache=cache,
                                         batch_size=self.batch_size)
                self.families.append(_Family(family, probe_set, cache, baseline))

    def _metrics(self, student: torch.nn.Module) -> dict[str, float]:
        out: dict[str, float] = {}
        for f in self.families:
            m = with_deltas(probe_metrics(student, self.components.teacher, f.probe_set,
                                          teacher_cache=f.teacher_cache, batch_size=self.batch_size), f.baseline)
            out.update(in_family(m, f.family) if f.family else m)
        return out

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def __call__(self, step: int) -> dict[str, float]:
        if not self.due(step):
            return {}
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[]):  # belt and braces: scoring draws no random numbers anyway
            metrics = self._metrics(self.components.rollout_student)
        return {**metrics, PROBE_TIME: time.perf_counter() - t0}
