"""On-policy distillation, top to bottom: (optional SFT warm-up) -> OPD steps -> validation -> checkpoints.

    python -c "from trainer.loop import train; from trainer.config import load_config; \
               train(load_config('trainer/configs/demo_opd.yaml'))"

Each OPD step: sample B = prompts x samples rollouts from the student (temperature 1, KV-cache loop);
score them with the student (pi_old), the teacher and the reference; advantage = teacher - student log-prob
of the sampled token; `minibatches` clipped-surrogate updates (+ beta * KL to the reference + alpha * golden
SFT, with beta and
alpha read from the controller every step); record everything into an opdwatch run directory.
Where we differ from the paper: token-mean losses over the minibatch, Adam at a constant lr, tiny models.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from opdwatch.errors import OpdwatchError
from opdwatch.recorder import Recorder, RecorderSettings
from trainer.checkpoint import load_latest, save_checkpoint
from trainer.components import Components, build_components, tokenizer_info
from trainer.config import TrainConfig, config_to_dict
from trainer.controller import Controller
from trainer.data import Example, prompt_ids, solution_ids
from trainer.engine import SamplingParams
from trainer.hf_engine import HFEngine
from trainer.scoring import build_sequences
from trainer.sft import golden_sequence, pack_right, sft_train
from trainer.step import mean_metrics, minibatch_update, score
from trainer.validation import validate

StepHook = Callable[[int, dict[str, float], Controller], None]  # e.g. a detector that calls controller.set()


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    controller: Controller | None = None,
    on_step: StepHook | None = None,
) -> Path:
    """Run (or resume) OPD as configured; returns the run directory."""
    torch.set_num_threads(config.run.threads)
    torch.manual_seed(config.run.seed)
    run_dir = config.run_dir
    ckpt = load_latest(run_dir) if resume else None
    if resume and ckpt is None:
        raise OpdwatchError(f"{run_dir}: no checkpoint to resume from")
    if not resume and (run_dir / "manifest.json").exists():  # fail before any model is loaded or trained
        raise OpdwatchError(f"{run_dir}: a run is already recorded here (resume it or choose a new run.name)")

    parts = build_components(config)
    student, tok = parts.student, parts.tokenizer
    optimizer = torch.optim.Adam(student.parameters(), lr=config.opd.lr)
    controller = controller or Controller(beta=config.opd.beta, alpha=config.opd.alpha)
    sampler_rng = torch.Generator().manual_seed(config.run.seed)  # rollout sampling
    prompt_rng = random.Random(config.run.seed)  # prompt order
    engine = HFEngine(student, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, generator=sampler_rng)
    if ckpt is None:
        sft_warmup(config, parts)
    else:
        restore(ckpt, parts, optimizer, controller, sampler_rng, prompt_rng)
    start = 1 if ckpt is None else ckpt["step"] + 1

    rec = Recorder.create(
        run_dir,
        config=config_to_dict(config),
        tokenizer_info=tokenizer_info(tok),
        settings=RecorderSettings(**config_to_dict(config.recorder)),
        resume_from_step=None if ckpt is None else ckpt["step"],
    )
    try:
        if ckpt is None:
            rec.event("info", step=0, message=f"start: beta={controller.beta:g}, alpha={controller.alpha:g}",
                      beta=controller.beta, alpha=controller.alpha)
            if config.val.every:
                run_validation(config, parts, engine, rec, step=0)
        record_interventions(rec, controller)  # changes made before training started
        bar = tqdm(range(start, config.opd.steps + 1), desc=config.run.name, disable=not config.run.progress,
                   initial=start - 1, total=config.opd.steps)
        val_accuracy = math.nan
        for step in bar:
            summary = opd_step(config, parts, engine, optimizer, controller, rec, prompt_rng, step)
            controller.step = step
            if config.val.every and (step % config.val.every == 0 or step == config.opd.steps):
                summary.update(run_validation(config, parts, engine, rec, step=step))
                val_accuracy = summary["val/accuracy"]
            if on_step is not None:
                on_step(step, summary, controller)  # a detector may change beta/alpha here ...
            record_interventions(rec, controller)  # ... recorded at this step, applied from the next one
            if step == config.opd.steps or (config.checkpoint.every and step % config.checkpoint.every == 0):
                state = checkpoint_state(step, parts, optimizer, controller, sampler_rng, prompt_rng, config)
                path = save_checkpoint(run_dir, step, state, config.checkpoint.keep)
                rec.event("checkpoint", step=step, message=f"saved {path.name}", path=str(path))
            bar.set_postfix(trunc=f"{summary['rollout/truncation_rate']:.2f}",
                            rep=f"{summary['rollout/repetition_rate']:.2f}",
                            len=f"{summary['rollout/mean_length']:.0f}", val_acc=f"{val_accuracy:.2f}", refresh=False)
    except BaseException as exc:
        rec.event("error", step=controller.step, message=f"{type(exc).__name__}: {exc}"[:500])
        rec.close("failed")
        raise
    rec.close("finished")
    return run_dir


def record_interventions(rec: Recorder, controller: Controller) -> None:
    for event in controller.drain():
        rec.event("intervention", step=event.step, message=event.message, beta=event.beta, alpha=event.alpha,
                  reason=event.reason)


def opd_step(
    config: TrainConfig,
    parts: Components,
    engine: HFEngine,
    optimizer: torch.optim.Optimizer,
    controller: Controller,
    rec: Recorder,
    prompt_rng: random.Random,
    step: int,
) -> dict[str, float]:
    """One OPD step; returns the recorder's step summary merged with loss/timing metrics."""
    tok, r = parts.tokenizer, config.rollout
    t0 = time.perf_counter()
    chosen = prompt_rng.sample(range(len(parts.splits.opd)), r.prompts_per_step)
    examples: list[Example] = [parts.splits.opd[i] for i in chosen]
    prompts_P = [prompt_ids(tok, ex.question) for ex in examples]
    prompts_B = [p for p in prompts_P for _ in range(r.samples_per_prompt)]  # prompt-major: row = p * S + s
    rollouts = engine.generate(prompts_B, SamplingParams(r.temperature, r.top_p, r.max_new_tokens))
    responses_B = rollouts.token_lists()
    t1 = time.perf_counter()

    seq = build_sequences(prompts_B, responses_B, tok.pad_token_id)
    scores = score(seq, parts.student, parts.teacher, parts.reference)
    t2 = time.perf_counter()

    beta, alpha = controller.beta, controller.alpha  # read once per step: a change applies from the next step
    lr = config.opd.lr * min(1.0, step / config.opd.warmup_steps) if config.opd.warmup_steps else config.opd.lr
    for group in optimizer.param_groups:  # a function of the step alone, so resuming needs no scheduler state
        group["lr"] = lr
    losses = []
    for prompt_idx in torch.arange(r.prompts_per_step).chunk(config.opd.minibatches):
        rows = (prompt_idx[:, None] * r.samples_per_prompt + torch.arange(r.samples_per_prompt)).flatten()
        golden = build_sequences(
            [prompts_P[i] for i in prompt_idx.tolist()],
            [solution_ids(tok, examples[i].solution) for i in prompt_idx.tolist()],
            tok.pad_token_id,
        )
        losses.append(
            minibatch_update(
                parts.student,
                optimizer,
                seq,
                scores,
                rows,
                golden,
                beta=beta,
                alpha=alpha,
                clip_eps=config.opd.clip_eps,
                grad_clip=config.opd.grad_clip,
            )
        )
    metrics = mean_metrics(losses)
    skipped = metrics["update/skipped_nonfinite"]
    if skipped:
        rec.event(
            "skip_update", step=step, message=f"non-finite log-prob/loss/grad: skipped {skipped:g} update(s)"
        )
    t3 = time.perf_counter()

    metrics.update(
        {
            "control/beta": beta,
            "control/alpha": alpha,
            "optim/lr": optimizer.param_groups[0]["lr"],
            "time/rollout": t1 - t0,
            "time/score": t2 - t1,
            "time/update": t3 - t2,
        }
    )
    texts = tok.batch_decode(responses_B, skip_special_tokens=True)
    summary = rec.record_step(
        step,
        phase="train",
        token_ids=seq.tokens_BT,
        lengths=rollouts.lengths_B,
        student_logp=scores.old_logp_BT,
        teacher_logp=scores.teacher_logp_BT,
        ref_logp=scores.ref_logp_BT,
        advantage=scores.advantage_BT,
        finish_reasons=rollouts.finish_reasons,
        texts=texts,
        source="onpolicy",
        prompt_ids=[f"opd-{chosen[i // r.samples_per_prompt]}" for i in range(len(prompts_B))],
        sample_index=[i % r.samples_per_prompt for i in range(len(prompts_B))],
        prompt_texts=[examples[i // r.samples_per_prompt].question for i in range(len(prompts_B))],
        metrics=metrics,
    )
    timing = {"time/record": time.perf_counter() - t3}
    rec.log_metrics(step, "train", timing)
    return {**summary, **timing}


def run_validation(
    config: TrainConfig, parts: Components, engine: HFEngine, rec: Recorder, step: int
) -> dict[str, float]:
    """Sample the held-out prompts (own RNG stream per step), check answers, record as phase "val"."""
    t0 = time.perf_counter()
    examples = parts.splits.val[: config.val.num_prompts]
    generator = torch.Generator().manual_seed(config.run.seed * 1_000_003 + step)
    res = validate(
        engine,
        parts.tokenizer,
        examples,
        SamplingParams(config.val.temperature, 1.0, config.val.max_new_tokens),
        generator,
    )
    summary = rec.record_step(
        step,
        phase="val",
        token_ids=res.batch.tokens_BT,
        lengths=res.batch.lengths_B,
        finish_reasons=res.batch.finish_reasons,
        texts=res.texts,
        source="val",
        correct=res.correct,
        prompt_ids=[f"val-{i}" for i in range(len(examples))],
        prompt_texts=[ex.question for ex in examples],
        metrics={"time/val": time.perf_counter() - t0},
    )
    return {
        f"val/{key.split('/', 1)[1]}": value for key, value in summary.items() if key.startswith("rollout/")
    }


def sft_warmup(config: TrainConfig, parts: Components) -> None:
    """Optional golden SFT of the student before OPD; the reference then becomes the warmed-up student."""
    if config.warmup.steps == 0:
        return
    tok, rng = parts.tokenizer, random.Random(config.run.seed)

    def make_batch(step: int) -> tuple[torch.Tensor, ...]:
        seqs = [golden_sequence(tok, ex) for ex in rng.sample(parts.splits.sft, config.warmup.batch_size)]
        return pack_right([s for s, _ in seqs], [m for _, m in seqs], tok.pad_token_id)

    sft_train(parts.student, make_batch, steps=config.warmup.steps, lr=config.warmup.lr)
    if config.models.reference == "student":
        parts.reference.load_state_dict(parts.student.state_dict())


def checkpoint_state(
    step: int,
    parts: Components,
    optimizer: torch.optim.Optimizer,
    controller: Controller,
    sampler_rng: torch.Generator,
    prompt_rng: random.Random,
    config: TrainConfig,
) -> dict:
    state = {
        "step": step,
        "student": parts.student.state_dict(),
        "optimizer": optimizer.state_dict(),
        "controller": controller.state_dict(),
        "rng": {
            "torch": torch.get_rng_state(),
            "sampler": sampler_rng.get_state(),
            "prompts": prompt_rng.getstate(),
        },
    }
    if config.warmup.steps and config.models.reference == "student":
        state["reference"] = parts.reference.state_dict()  # the warmed-up student is not on disk elsewhere
    return state


def restore(
    ckpt: dict,
    parts: Components,
    optimizer: torch.optim.Optimizer,
    controller: Controller,
    sampler_rng: torch.Generator,
    prompt_rng: random.Random,
) -> None:
    parts.student.load_state_dict(ckpt["student"])
    if "reference" in ckpt:
        parts.reference.load_state_dict(ckpt["reference"])
    optimizer.load_state_dict(ckpt["optimizer"])
    controller.load_state_dict(ckpt["controller"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    sampler_rng.set_state(ckpt["rng"]["sampler"])
    prompt_rng.setstate(ckpt["rng"]["prompts"])
