"""One OPD step in four phases, each a function, called in this order by `opd_step`:

    batch = sample_rollouts(config, components, engine, prompt_rng, env)    # prompts -> rollouts from the student
    scores = score_rollouts(config, components, batch)                      # teacher scores -> advantages
    metrics = update_student(config, components, optimizer, controller, batch, scores, step, env)  # loss -> step
    summary = record_rollouts(components, rec, batch, scores, metrics, step, env)  # rollouts and metrics -> run

Data parallel (torchrun): every rank draws the same prompts and takes its share of each minibatch; local
positions index this rank's prompts, while `StepBatch.chosen` and the engine's row numbers stay global.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import torch

from opdwatch import aggregates
from opdwatch.recorder import Recorder
from opdwatch.trainer.config import TrainConfig
from opdwatch.trainer.data.offsets import char_ends
from opdwatch.trainer.data.task import Example, prompt_ids, solution_ids
from opdwatch.trainer.loop.components import Components
from opdwatch.trainer.loop.controller import Controller
from opdwatch.trainer.loop.scores import Scores, score_sequences
from opdwatch.trainer.loop.update import mean_metrics, minibatch_update
from opdwatch.trainer.objectives.scoring import SequenceBatch, build_sequences
from opdwatch.trainer.objectives.variants import ESTIMATORS
from opdwatch.trainer.parallel.distributed import SINGLE, DistEnv, local_minibatches, reduce_partials
from opdwatch.trainer.rollout.engine import RolloutBatch, RolloutEngine, RowIndex, SamplingParams


@dataclass
class StepBatch:
    """What the sample phase drew and generated on this rank; rows are prompt-major (row = p * samples + s)."""

    chosen: list[int]  # indices into splits.opd of this rank's prompts, in local order
    examples: list[Example]  # those prompts' examples (questions and golden solutions)
    shares: list[list[int]]  # global prompt positions of each minibatch, this rank's part of it
    samples: int  # rollouts per prompt (S)
    prompts_P: list[list[int]]  # prompt token ids, one per prompt
    prompts_B: list[list[int]]  # prompt token ids, one per rollout
    rollouts: RolloutBatch  # the engine's responses and their sampling log-probs
    responses_B: list[list[int]]  # response token ids, unpadded
    seq: SequenceBatch  # prompt + response sequences, what scoring and the update run the models on


def sample_rollouts(config: TrainConfig, components: Components, engine: RolloutEngine,
                    prompt_rng: random.Random, env: DistEnv = SINGLE) -> StepBatch:
    """Sample phase: draw the step's prompts (the same on every rank), keep this rank's share, and generate
    `samples_per_prompt` rollouts of each from the student. The engine is told the rows' global numbers, so a
    rollout's randomness follows its place in the global batch, not the rank that samples it."""
    tok, r = components.tokenizer, config.rollout
    S = r.samples_per_prompt
    chosen_all = prompt_rng.sample(range(len(components.splits.opd)), r.prompts_per_step)
    shares = local_minibatches(r.prompts_per_step, config.opd.minibatches, env)  # global prompt positions
    mine = [g for share in shares for g in share]
    chosen = [chosen_all[g] for g in mine]
    examples = [components.splits.opd[i] for i in chosen]
    prompts_P = [prompt_ids(tok, ex.question) for ex in examples]
    prompts_B = [p for p in prompts_P for _ in range(S)]
    rows = RowIndex(tuple(g * S + s for g in mine for s in range(S)), r.prompts_per_step * S)
    rollouts = engine.generate(prompts_B, SamplingParams(r.temperature, r.top_p, r.max_new_tokens), rows=rows)
    responses_B = rollouts.token_lists()
    seq = build_sequences(prompts_B, responses_B, tok.pad_token_id)
    return StepBatch(chosen, examples, shares, S, prompts_P, prompts_B, rollouts, responses_B, seq)


def score_rollouts(config: TrainConfig, components: Components, batch: StepBatch) -> Scores:
    """Score phase: student (pi_old), teacher and reference log-probs of every rollout token, and the advantage
    teacher - student; the teacher's top-K support too when the estimator needs it, and the loss mask without
    special tokens when `objective.mask_special_tokens` (the stop tokens keep their loss)."""
    tok, opd = components.tokenizer, config.opd
    estimator = ESTIMATORS[config.objective.estimator]
    stop_ids = components.mapping.student_stop_ids if components.mapping else (tok.eos_token_id,)
    return score_sequences(batch.seq, components.student, components.teacher, components.reference,
                           mapping=components.mapping, topk=config.objective.topk if estimator.needs_topk else 0,
                           chunk_rows=opd.score_chunk_rows, keep_ref_logits=opd.micro_rows == 0,
                           masked_ids=components.special_ids if config.objective.mask_special_tokens else (),
                           stop_ids=stop_ids)


def update_student(config: TrainConfig, components: Components, optimizer: torch.optim.Optimizer,
                   controller: Controller, batch: StepBatch, scores: Scores, step: int,
                   env: DistEnv = SINGLE) -> dict[str, float]:
    """Update phase: the loss and an optimizer step per minibatch (clipped surrogate + beta * KL to the
    reference + alpha * golden SFT on the minibatch's prompts), at this step's warm-up learning rate. Returns
    the minibatches' mean loss metrics with the beta, alpha and lr they used."""
    opd, S = config.opd, batch.samples
    tok = components.tokenizer
    estimator = ESTIMATORS[config.objective.estimator]
    beta, alpha = controller.beta, controller.alpha  # read once per step: a change applies from the next step
    lr = opd.lr * min(1.0, step / opd.warmup_steps) if opd.warmup_steps else opd.lr
    for group in optimizer.param_groups:  # a function of the step alone, so resuming needs no scheduler state
        group["lr"] = lr
    losses = []
    offset = 0
    for share in batch.shares:
        prompt_idx = torch.arange(offset, offset + len(share))  # local prompt positions of this minibatch
        offset += len(share)
        rows = (prompt_idx[:, None] * S + torch.arange(S)).flatten()
        golden = build_sequences([batch.prompts_P[i] for i in prompt_idx.tolist()],
                                 [solution_ids(tok, batch.examples[i].solution) for i in prompt_idx.tolist()],
                                 tok.pad_token_id)
        losses.append(minibatch_update(components.student, optimizer, batch.seq, scores, rows, golden, beta=beta,
                                       alpha=alpha, clip_eps=opd.clip_eps, grad_clip=opd.grad_clip,
                                       estimator=estimator, env=env, micro_rows=opd.micro_rows,
                                       reference=components.reference))
    if components.rollout_copy is not None:  # FSDP: the next rollouts (and validation) see the updated weights
        components.rollout_copy.refresh(components.student)
    metrics = mean_metrics(losses)
    metrics.update({"control/beta": beta, "control/alpha": alpha, "optim/lr": optimizer.param_groups[0]["lr"]})
    return metrics


def record_rollouts(components: Components, rec: Recorder, batch: StepBatch, scores: Scores,
                    metrics: dict[str, float], step: int, env: DistEnv = SINGLE) -> dict[str, float]:
    """Record phase: every rollout token with its log-probs, advantage and text into the run (each rank its own
    rollouts), and the step's metrics (rank 0, global over ranks). Returns the step summary."""
    skipped = metrics["update/skipped_nonfinite"]
    if skipped and env.is_main:
        rec.event("skip_update", step=step, message=f"non-finite log-prob/loss/grad: skipped {skipped:g} update(s)")
    t0 = time.perf_counter()
    tok, S, n = components.tokenizer, batch.samples, len(batch.prompts_B)
    texts = tok.batch_decode(batch.responses_B, skip_special_tokens=True)
    summary = rec.record_step(
        step,
        phase="train",
        token_ids=batch.seq.tokens_BT,
        lengths=batch.rollouts.lengths_B,
        student_logp=scores.old_logp_BT,
        teacher_logp=scores.teacher_logp_BT,
        ref_logp=scores.ref_logp_BT,
        advantage=scores.advantage_BT,
        loss_mask=None if scores.loss_mask_BT is None else scores.loss_mask_BT.bool(),
        finish_reasons=batch.rollouts.finish_reasons,
        texts=texts,
        char_ends=char_ends(tok, batch.responses_B, texts),
        source="onpolicy",
        prompt_ids=[f"opd-{batch.chosen[i // S]}" for i in range(n)],
        sample_index=[i % S for i in range(n)],
        prompt_texts=[batch.examples[i // S].question for i in range(n)],
        metrics=metrics,
    )
    if env.active:  # each rank recorded its rollouts; the step's metrics are over all ranks (rank 0 writes them)
        summary = {**aggregates.finalize(reduce_partials(rec.partials(step, "train"), env)), **metrics}
        rec.log_metrics(step, "train", summary)
    # time/record_total: this whole phase (decoding the texts, their character offsets, record_step and, under
    # torchrun, the all-reduce of the partials). The recorder's own time/record is the time inside record_step
    # alone, on this rank.
    timing = {"time/record_total": time.perf_counter() - t0}
    rec.log_metrics(step, "train", timing)
    return {**summary, **timing}


def opd_step(
    config: TrainConfig,
    components: Components,
    engine: RolloutEngine,
    optimizer: torch.optim.Optimizer,
    controller: Controller,
    rec: Recorder,
    prompt_rng: random.Random,
    step: int,
    env: DistEnv = SINGLE,
) -> dict[str, float]:
    """One OPD step: sample -> score -> update -> record. Returns the step summary (global over ranks) merged
    with the loss and timing metrics."""
    t0 = time.perf_counter()
    batch = sample_rollouts(config, components, engine, prompt_rng, env)
    t1 = time.perf_counter()
    scores = score_rollouts(config, components, batch)
    t2 = time.perf_counter()
    metrics = update_student(config, components, optimizer, controller, batch, scores, step, env)
    t3 = time.perf_counter()
    metrics.update({"time/rollout": t1 - t0, "time/score": t2 - t1, "time/update": t3 - t2})
    return record_rollouts(components, rec, batch, scores, metrics, step, env)
