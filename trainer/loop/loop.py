"""On-policy distillation, top to bottom: (optional SFT warm-up) -> OPD steps -> validation -> checkpoints.

    python -c "from opdwatch.trainer.loop.loop import train; from opdwatch.trainer.config import load_config; \
               train(load_config('demo_opd'))"

Each OPD step (loop/step.py): sample B = prompts x samples rollouts from the student (temperature 1, KV-cache
loop); score them with the student (pi_old), the teacher and the reference; advantage = teacher - student
log-prob of the sampled token; `minibatches` clipped-surrogate updates (+ beta * KL to the reference + alpha *
golden SFT, with beta and alpha read from the controller every step); record everything into an opdwatch run
directory. After each step this loop validates, logs the step's summary through a metric logger (wandb when
`log.wandb` is on) whatever the watch does, lets the watch and the step hook change beta/alpha, and checkpoints.
Where we differ from the paper: token-mean losses over the minibatch, Adam at a constant lr, tiny models.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from opdwatch.detector.settings import WatchConfig
from opdwatch.loggers import MetricLogger, NullLogger, WandbLogger
from opdwatch.recorder import Recorder
from opdwatch.trainer.config import TrainConfig, config_to_dict
from opdwatch.trainer.loop.checkpoint import checkpoint_state, continue_from, drop_recorded, restore, save_checkpoint
from opdwatch.trainer.loop.components import Components, build_components, tokenizer_info
from opdwatch.trainer.loop.controller import Controller, record_events
from opdwatch.trainer.loop.probe import InRunProbe
from opdwatch.trainer.loop.step import opd_step
from opdwatch.trainer.loop.validation import run_validation
from opdwatch.trainer.loop.watch import TrainerWatch, restore_healthy
from opdwatch.trainer.objectives.sft import golden_sequence, pack_right, sft_train
from opdwatch.trainer.parallel.distributed import (
    SINGLE,
    DistEnv,
    broadcast_object,
    init_from_env,
    main_first,
    shutdown,
    sync_controller,
)
from opdwatch.trainer.parallel.fsdp import RolloutCopy, shard_student
from opdwatch.trainer.rollout.engines import ENGINES

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

    Under `torchrun` every rank runs this function (data parallel, parallel/distributed.py, docs/scale.md): rank 0
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
    # probe/... step metrics every probe.every steps (trainer/loop/probe.py); it never changes the trajectory
    probe = InRunProbe(config, components) if config.probe.every and env.is_main else None

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
        # The early-warning watch (trainer/loop/watch.py): detector, alerts and beta/alpha interventions per
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
            if probe is not None and probe.due(step):
                probed = probe(step)
                rec.log_metrics(step, "train", probed)
                summary.update(probed)
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
                                         watch_state=watch.state_dict())
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


def record_interventions(rec: Recorder, controller: Controller, env: DistEnv = SINGLE) -> None:
    """Write what the controller queued (changes by the watch or a hook, restores): rank 0 only, since the
    other ranks hold rank 0's copy of the queue (sync_controller)."""
    if env.is_main:
        record_events(rec, controller.drain())


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
