"""On-policy distillation, top to bottom: (optional SFT warm-up) -> OPD steps -> validation -> checkpoints.

    python -c "from trainer.loop import train; from trainer.config import load_config; \
               train(load_config('trainer/configs/demo_opd.yaml'))"

Each OPD step: sample B = prompts x samples rollouts from the student (temperature 1, KV-cache loop);
score them with the student (pi_old), the teacher and the reference; advantage = teacher - student log-prob
of the sampled token; `minibatches` clipped-surrogate updates (+ beta * KL to the reference + alpha * golden
SFT, with beta and alpha read from the controller every step); record everything into an opdwatch run
directory, and log each step's summary through a metric logger (wandb when `log.wandb` is on) whatever the
watch does.
Where we differ from the paper: token-mean losses over the minibatch, Adam at a constant lr, tiny models.
"""

from __future__ import annotations

import math
import random
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from opdwatch import aggregates
from opdwatch.detector.settings import WatchConfig
from opdwatch.errors import OpdwatchError
from opdwatch.format import EVENTS_DIR, MANIFEST, TABLES
from opdwatch.loggers import MetricLogger, NullLogger, WandbLogger
from opdwatch.recorder import Recorder
from trainer.checkpoint import CHECKPOINTS, load_latest, save_checkpoint
from trainer.components import Components, build_components, tokenizer_info
from trainer.config import TrainConfig, config_to_dict
from trainer.controller import Controller, record_events
from trainer.data import Example, prompt_ids, solution_ids
from trainer.distributed import (
    SINGLE,
    DistEnv,
    broadcast_object,
    init_from_env,
    local_minibatches,
    main_first,
    reduce_partials,
    shutdown,
    sync_controller,
)
from trainer.engine import RolloutEngine, SamplingParams
from trainer.engines import ENGINES
from trainer.fsdp import (
    RolloutCopy,
    full_model_state,
    full_optimizer_state,
    is_sharded,
    load_full_state,
    shard_student,
)
from trainer.offsets import char_ends
from trainer.scoring import build_sequences
from trainer.sft import golden_sequence, pack_right, sft_train
from trainer.step import mean_metrics, minibatch_update, score
from trainer.validation import validate
from trainer.variants import ESTIMATORS
from trainer.watch import TrainerWatch, restore_healthy

StepHook = Callable[[int, dict[str, float], Controller], None]  # e.g. a detector that calls controller.set()


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    controller: Controller | None = None,
    on_step: StepHook | None = None,
) -> Path:
    """Run (or resume) OPD as configured; returns the run directory.

    A run already recorded in the run directory is refused, unless `resume` (continue from its latest checkpoint;
    one that stopped before its first checkpoint starts again from scratch) or `overwrite` (replace it).

    Under `torchrun` every rank runs this function (data parallel, trainer.distributed, docs/scale.md): rank 0
    owns the manifest, step metrics, validation, events and checkpoints; every rank records its own rollouts.
    """
    env = init_from_env()
    torch.set_num_threads(config.run.threads)
    torch.manual_seed(config.run.seed)
    run_dir = config.run_dir
    ckpt, start_over = continue_from(run_dir, resume=resume, overwrite=overwrite, env=env)  # before models load
    # every rank has looked at the run directory before rank 0 may empty it below
    start_over = broadcast_object(start_over, env)

    with main_first(env):  # rank 0 builds and caches demo models before the other ranks load them
        components = build_components(config)
        if start_over and env.is_main:  # after the models loaded: a config that fails to load loses nothing
            drop_recorded(run_dir)
    if ckpt is None:
        sft_warmup(config, components)  # on the full student: every rank runs the same warm-up
    if config.distributed.fsdp:  # shard after the warm-up; rollouts then sample from an unsharded copy
        components.rollout_copy = RolloutCopy(components.student) if config.engine.kind == "hf" else None
        shard_student(components.student, env)
    student, tok = components.student, components.tokenizer
    optimizer = torch.optim.Adam(student.parameters(), lr=config.opd.lr)  # after sharding: it holds the shards
    controller = controller or Controller(beta=config.opd.beta, alpha=config.opd.alpha)
    sampler_rng = torch.Generator().manual_seed(config.run.seed)  # rollout sampling
    prompt_rng = random.Random(config.run.seed)  # prompt order
    engine = ENGINES[config.engine.kind](config, components, sampler_rng)
    if ckpt is not None:
        restore(ckpt, components, optimizer, controller, sampler_rng, prompt_rng)
    start = 1 if ckpt is None else ckpt["step"] + 1

    rec = Recorder.create(
        run_dir,
        config=config_to_dict(config),
        tokenizer_info=tokenizer_info(tok, components.mapping),
        settings=config.recorder,
        rank=env.rank,
        world_size=env.world_size,
        resume_from_step=None if ckpt is None else ckpt["step"],
    )
    logger: MetricLogger = NullLogger()
    watch: TrainerWatch | None = None
    try:
        # wandb starts inside the try, so that a failure to start it is recorded and marks the run failed
        wandb = wandb_logger(config) if env.is_main else None
        logger = wandb or NullLogger()
        # The early-warning watch (trainer/watch.py): detector, alerts and beta/alpha interventions per
        # config.watch.mode. Rank 0 only, since only it sees the global step metrics; sync_controller hands its
        # beta/alpha to the other ranks. Rollbacks only in single-process runs (each rank would have to load
        # the checkpoint); its alerts go into the loop's wandb run.
        watch = TrainerWatch(config.watch if env.is_main else WatchConfig(mode="off"), rec, controller=controller,
                             logger=wandb, run_name=config.run.name, restore=None if env.world_size > 1 else
                             lambda max_step: restore_healthy(run_dir, max_step, student, optimizer))
        if ckpt is not None:  # continue watching where the checkpoint left off (none saved there: start afresh)
            watch.resume(ckpt.get("watch"), ckpt["step"])
        if ckpt is None and env.is_main:
            rec.event("info", step=0, message=f"start: beta={controller.beta:g}, alpha={controller.alpha:g}",
                      beta=controller.beta, alpha=controller.alpha)
            if config.val.every:
                run_validation(config, components, engine, rec, step=0)
        record_interventions(rec, controller, env)  # changes made before training started
        bar = tqdm(range(start, config.opd.steps + 1), desc=config.run.name,
                   disable=not config.run.progress or not env.is_main, initial=start - 1, total=config.opd.steps)
        val_accuracy = math.nan
        for step in bar:
            summary = opd_step(config, components, engine, optimizer, controller, rec, prompt_rng, step, env)
            controller.step = step
            if config.val.every and (step % config.val.every == 0 or step == config.opd.steps) and env.is_main:
                summary.update(run_validation(config, components, engine, rec, step=step))
                val_accuracy = summary["val/accuracy"]
            summary = broadcast_object(summary, env)  # every rank's hook sees rank 0's global summary
            logger.log(step, summary)  # whatever watch.mode is
            watch(step, summary)  # may change beta/alpha for the next step
            if on_step is not None:
                on_step(step, summary, controller)  # a detector may change beta/alpha here ...
            sync_controller(controller, env)  # rank 0's beta/alpha win: replicas never train differently
            record_interventions(rec, controller, env)  # ... recorded at this step, applied from the next one
            every = config.checkpoint.every
            if step == config.opd.steps or (every and step % every == 0):
                # every rank: under FSDP gathering the full state is a collective; rank 0 writes it
                state = checkpoint_state(step, components, optimizer, controller, sampler_rng, prompt_rng, config,
                                         watch=watch)
                if env.is_main:
                    path = save_checkpoint(run_dir, step, state, config.checkpoint.keep)
                    rec.event("checkpoint", step=step, message=f"saved {path.name}", path=str(path))
            bar.set_postfix(trunc=f"{summary['rollout/truncation_rate']:.2f}",
                            rep=f"{summary['rollout/repetition_rate']:.2f}",
                            len=f"{summary['rollout/mean_length']:.0f}", val_acc=f"{val_accuracy:.2f}", refresh=False)
    except BaseException as exc:
        if watch is not None:
            watch.close()
        logger.close()
        rec.event("error", step=controller.step, message=f"{type(exc).__name__}: {exc}"[:500])
        rec.close("failed")
        raise
    watch.close()
    logger.close()  # finishes the wandb run the loop started
    rec.close("finished")
    shutdown(env)
    return run_dir


def wandb_logger(config: TrainConfig) -> WandbLogger | None:
    """The run's wandb logger when `log.wandb` (or the older `watch.wandb`) is enabled, else None. Its files
    go into the run directory, beside what opdwatch records."""
    settings = config.wandb
    if not settings.enabled:
        return None
    return WandbLogger(settings, name=config.run.name, config=config_to_dict(config), directory=config.run_dir)


def continue_from(run_dir: Path, *, resume: bool, overwrite: bool, env: DistEnv = SINGLE) -> tuple[dict | None, bool]:
    """The checkpoint to continue from, and whether the run recorded in `run_dir` is to be dropped first.

    Refusals name the way forward. A run killed before its first checkpoint has nothing to continue from, so
    `--resume` starts it again from scratch (it would otherwise be stuck: a fresh start refuses a recorded run).
    """
    if resume and overwrite:
        raise OpdwatchError("--resume and --overwrite exclude each other")
    recorded = (run_dir / MANIFEST).exists()
    if overwrite:
        return None, recorded
    if not resume:
        if recorded:
            raise OpdwatchError(f"{run_dir}: a run is already recorded here: --resume continues it (from its latest "
                                "checkpoint, or from scratch if it has none), --overwrite replaces it, or choose a "
                                "new run.name")
        return None, False
    ckpt = load_latest(run_dir)
    if ckpt is not None:
        return ckpt, False
    if not recorded:
        raise OpdwatchError(f"{run_dir}: no run is recorded here to resume: start it without --resume")
    if env.is_main:
        warnings.warn(f"{run_dir}: no checkpoint to resume from (the run stopped before its first one): starting "
                      "it again from scratch and dropping what it recorded", UserWarning, stacklevel=2)
    return None, True


def drop_recorded(run_dir: Path) -> None:
    """Delete what opdwatch recorded in `run_dir` (tables, events, checkpoints, manifest) and nothing else."""
    for name in (*TABLES, EVENTS_DIR, CHECKPOINTS):
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    (run_dir / MANIFEST).unlink(missing_ok=True)  # last: a drop cut short still looks recorded, so is redone


def record_interventions(rec: Recorder, controller: Controller, env: DistEnv = SINGLE) -> None:
    """Write what the controller queued (changes by the watch or a hook, restores): rank 0 only, since the
    other ranks hold rank 0's copy of the queue (sync_controller)."""
    if env.is_main:
        record_events(rec, controller.drain())


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
    """One OPD step; returns the step summary (global over ranks) merged with loss/timing metrics.

    Data parallel: every rank draws the same prompts and takes its share of each minibatch; local positions
    index this rank's prompts, while `chosen` and the sampler's row numbers stay global.
    """
    tok, r, S = components.tokenizer, config.rollout, config.rollout.samples_per_prompt
    t0 = time.perf_counter()
    chosen_all = prompt_rng.sample(range(len(components.splits.opd)), r.prompts_per_step)
    shares = local_minibatches(r.prompts_per_step, config.opd.minibatches, env)  # global prompt positions
    mine = [g for share in shares for g in share]
    chosen = [chosen_all[g] for g in mine]
    examples: list[Example] = [components.splits.opd[i] for i in chosen]
    prompts_P = [prompt_ids(tok, ex.question) for ex in examples]
    prompts_B = [p for p in prompts_P for _ in range(S)]  # prompt-major: row = p * S + s
    engine.rows = ([g * S + s for g in mine for s in range(S)], r.prompts_per_step * S)  # global row numbers
    rollouts = engine.generate(prompts_B, SamplingParams(r.temperature, r.top_p, r.max_new_tokens))
    responses_B = rollouts.token_lists()
    t1 = time.perf_counter()

    estimator = ESTIMATORS[config.objective.estimator]
    seq = build_sequences(prompts_B, responses_B, tok.pad_token_id)
    scores = score(seq, components.student, components.teacher, components.reference, mapping=components.mapping,
                   topk=config.objective.topk if estimator.needs_topk else 0,
                   chunk_rows=config.opd.score_chunk_rows, keep_ref_logits=config.opd.micro_rows == 0,
                   masked_ids=components.special_ids if config.objective.mask_special_tokens else (),
                   stop_ids=components.mapping.student_stop_ids if components.mapping else (tok.eos_token_id,))
    t2 = time.perf_counter()

    beta, alpha = controller.beta, controller.alpha  # read once per step: a change applies from the next step
    lr = config.opd.lr * min(1.0, step / config.opd.warmup_steps) if config.opd.warmup_steps else config.opd.lr
    for group in optimizer.param_groups:  # a function of the step alone, so resuming needs no scheduler state
        group["lr"] = lr
    losses = []
    offset = 0
    for share in shares:
        prompt_idx = torch.arange(offset, offset + len(share))  # local prompt positions of this minibatch
        offset += len(share)
        rows = (prompt_idx[:, None] * S + torch.arange(S)).flatten()
        golden = build_sequences(
            [prompts_P[i] for i in prompt_idx.tolist()],
            [solution_ids(tok, examples[i].solution) for i in prompt_idx.tolist()],
            tok.pad_token_id,
        )
        losses.append(
            minibatch_update(
                components.student,
                optimizer,
                seq,
                scores,
                rows,
                golden,
                beta=beta,
                alpha=alpha,
                clip_eps=config.opd.clip_eps,
                grad_clip=config.opd.grad_clip,
                estimator=estimator,
                env=env,
                micro_rows=config.opd.micro_rows,
                reference=components.reference,
            )
        )
    if components.rollout_copy is not None:  # FSDP: the next rollouts (and validation) see the updated weights
        components.rollout_copy.refresh(components.student)
    metrics = mean_metrics(losses)
    skipped = metrics["update/skipped_nonfinite"]
    if skipped and env.is_main:
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
    ends = char_ends(tok, responses_B, texts)
    summary = rec.record_step(
        step,
        phase="train",
        token_ids=seq.tokens_BT,
        lengths=rollouts.lengths_B,
        student_logp=scores.old_logp_BT,
        teacher_logp=scores.teacher_logp_BT,
        ref_logp=scores.ref_logp_BT,
        advantage=scores.advantage_BT,
        loss_mask=None if scores.loss_mask_BT is None else scores.loss_mask_BT.bool(),
        finish_reasons=rollouts.finish_reasons,
        texts=texts,
        char_ends=ends,
        source="onpolicy",
        prompt_ids=[f"opd-{chosen[i // S]}" for i in range(len(prompts_B))],
        sample_index=[i % S for i in range(len(prompts_B))],
        prompt_texts=[examples[i // S].question for i in range(len(prompts_B))],
        metrics=metrics,
    )
    if env.active:  # each rank recorded its rollouts; the step's metrics are over all ranks (rank 0 writes them)
        summary = {**aggregates.finalize(reduce_partials(rec.partials(step, "train"), env)), **metrics}
        rec.log_metrics(step, "train", summary)
    # time/record_total: the loop's whole recording phase (decoding the texts, their character offsets,
    # record_step and, under torchrun, the all-reduce of the partials). The recorder's own time/record is the
    # time inside record_step alone, on this rank.
    timing = {"time/record_total": time.perf_counter() - t3}
    rec.log_metrics(step, "train", timing)
    return {**summary, **timing}


def run_validation(
    config: TrainConfig, components: Components, engine: RolloutEngine, rec: Recorder, step: int
) -> dict[str, float]:
    """Sample the held-out prompts (own RNG stream per step), check answers, record as phase "val"."""
    t0 = time.perf_counter()
    examples = components.splits.val[: config.val.num_prompts]
    generator = torch.Generator().manual_seed(config.run.seed * 1_000_003 + step)
    res = validate(
        engine,
        components.tokenizer,
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
        write_metrics=True,  # only rank 0 validates, so its metrics are the global ones
    )
    return {
        f"val/{key.split('/', 1)[1]}": value for key, value in summary.items() if key.startswith("rollout/")
    }


def sft_warmup(config: TrainConfig, components: Components) -> None:
    """Optional golden SFT of the student before OPD; the reference then becomes the warmed-up student."""
    if config.warmup.steps == 0:
        return
    components.student_matches_files = False
    tok, rng = components.tokenizer, random.Random(config.run.seed)

    def make_batch(step: int) -> tuple[torch.Tensor, ...]:
        seqs = [golden_sequence(tok, ex) for ex in rng.sample(components.splits.sft, config.warmup.batch_size)]
        return pack_right([s for s, _ in seqs], [m for _, m in seqs], tok.pad_token_id)

    sft_train(components.student, make_batch, steps=config.warmup.steps, lr=config.warmup.lr)
    if config.models.reference == "student":
        components.reference.load_state_dict(components.student.state_dict())


def checkpoint_state(
    step: int,
    components: Components,
    optimizer: torch.optim.Optimizer,
    controller: Controller,
    sampler_rng: torch.Generator,
    prompt_rng: random.Random,
    config: TrainConfig,
    watch: TrainerWatch | None = None,
) -> dict:
    sharded = is_sharded(components.student)
    state = {
        "step": step,
        # FSDP: full tensors gathered from the shards (same layout as one process), optimizer state by name
        "student": full_model_state(components.student) if sharded else components.student.state_dict(),
        "optimizer": full_optimizer_state(components.student, optimizer) if sharded else optimizer.state_dict(),
        "optimizer_keys": "names" if sharded else "ids",
        "controller": controller.state_dict(),
        "rng": {
            "torch": torch.get_rng_state(),
            "sampler": sampler_rng.get_state(),
            "prompts": prompt_rng.getstate(),
        },
    }
    if config.warmup.steps and config.models.reference == "student":
        state["reference"] = components.reference.state_dict()  # the warmed-up student is not on disk elsewhere
    if watch is not None:  # detector baselines/statistics and policy cooldowns (None when the watch is off)
        state["watch"] = watch.state_dict()
    return state


def restore(
    ckpt: dict,
    components: Components,
    optimizer: torch.optim.Optimizer,
    controller: Controller,
    sampler_rng: torch.Generator,
    prompt_rng: random.Random,
) -> None:
    if is_sharded(components.student) and ckpt.get("optimizer_keys") != "names":
        raise OpdwatchError("this checkpoint was written without FSDP: resume it with distributed.fsdp=false")
    if ckpt.get("optimizer_keys") == "names":
        load_full_state(components.student, optimizer, ckpt["student"], ckpt["optimizer"])
    else:
        components.student.load_state_dict(ckpt["student"])
        optimizer.load_state_dict(ckpt["optimizer"])
    if components.rollout_copy is not None:
        components.rollout_copy.refresh(components.student)
    if "reference" in ckpt:
        components.reference.load_state_dict(ckpt["reference"])
    controller.load_state_dict(ckpt["controller"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    sampler_rng.set_state(ckpt["rng"]["sampler"])
    prompt_rng.setstate(ckpt["rng"]["prompts"])
