"""Watch a TRL distillation run live: one call before ``trainer.train()``.

    from opdwatch.integrations.trl import attach
    trainer = GKDTrainer(model=student, teacher_model=teacher, args=GKDConfig(lmbda=1.0, ...), ...)
    attach(trainer, "runs/gkd-1", watch="act")      # "off" | "warn" (default) | "act", or a TRLWatch
    trainer.train()                                 # opdwatch info / analyze / detect / dashboard runs/gkd-1

Supported: ``trl.DistillationTrainer`` and, with ``lmbda > 0``, ``trl.experimental.gkd.GKDTrainer`` and
``trl.experimental.gold.GOLDTrainer`` (TRL 1.16; the hooks check the installed version's methods at attach).
Every optimizer step's on-policy rollouts become one ``Recorder.record_step``: the sampled tokens, the student's
and the teacher's log-probs of them (at the temperature the trainer's loss uses), the advantage
(teacher - student, derived by the recorder), the loss mask, special-token flags, texts, and truncation
computed from the tokens: a rollout is truncated when no EOS id is among its first ``budget`` tokens (TRL's own
``completions/clipped_ratio`` also counts a pad id as an ending; both figures land in the step row, ours as
``rollout/truncation_rate``, TRL's as ``trl/completions/clipped_ratio``). TRL's scalar logs join the same
row under ``trl/``. Steps are TRL's ``global_step`` (1, 2, ...), as in ``trainer_state.json``.

The detector runs on every recorded step (opdwatch.detector.Watcher): warn mode writes warning/alarm events,
sends the configured alert channels and, when the trainer reports to wandb, ``run.alert`` into its run; act
mode also moves the knobs (opdwatch.integrations._trl_knobs: alpha -> GKD/GOLD ``lmbda``) or, where there is
none, saves a checkpoint and stops (``stop_at``) or calls ``on_trouble``. The watch never breaks the training:
its own failures are error events unless ``strict``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from opdwatch.detector.detector import LEVELS
from opdwatch.detector.settings import WatchConfig
from opdwatch.detector.watcher import Watcher
from opdwatch.errors import OpdwatchError
from opdwatch.integrations import _trl_hooks as hooks
from opdwatch.integrations._trl_knobs import TRLKnobs
from opdwatch.recorder import Recorder, RecorderSettings

STOP_LEVELS = ("warning", "alarm", "never", "auto")


@dataclass(frozen=True)
class TRLWatch:
    # How attach() watches a TRL run
    mode: str = "warn"  # "off", "warn" (events and alerts) or "act" (also move knobs, or stop)
    watch: WatchConfig = field(default_factory=WatchConfig)  # detector, policy, alert channels (its mode: ignored)
    # act mode: the detector level at which to save a checkpoint and stop training ("warning", "alarm", "never");
    # "auto" = "alarm" for a trainer without an on-policy knob (DistillationTrainer) and no on_trouble, else never
    stop_at: str = "auto"
    # called as on_trouble(trainer, state, decisions) at every escalation to warning or alarm (warn and act)
    on_trouble: Callable[[Any, Any, list[Any]], None] | None = None
    strict: bool = False  # re-raise opdwatch's own errors inside the hooks instead of recording them (tests)

    def validate(self) -> None:
        if self.mode not in ("off", "warn", "act"):
            raise OpdwatchError(f"watch mode must be off, warn or act, got {self.mode!r}")
        if self.stop_at not in STOP_LEVELS:
            raise OpdwatchError(f"stop_at must be one of {STOP_LEVELS}, got {self.stop_at!r}")


def finish_reasons(responses: list[np.ndarray], eos_ids: list[int], budget: int) -> list[str]:
    """"eos" when an EOS id is among a response's first ``budget`` tokens, else "length" (truncated)."""
    eos = np.asarray(eos_ids, dtype=np.int64)
    return ["eos" if np.isin(np.asarray(r[:budget]), eos).any() else "length" for r in responses]


def prompt_key(prompt_ids: np.ndarray) -> str:
    """A stable id for a prompt: the same tokens give the same id across steps (the dashboard groups by it)."""
    return "trl-" + hashlib.sha1(np.asarray(prompt_ids, dtype=np.int64).tobytes()).hexdigest()[:12]


class Attachment:
    """The live link between one trainer and one run directory (returned by :func:`attach`)."""

    def __init__(self, trainer: Any, spec: hooks.HookSpec, recorder: Recorder, settings: TRLWatch) -> None:
        self.trainer, self.spec, self.recorder, self.settings = trainer, spec, recorder, settings
        tok = trainer.processing_class
        self.tokenizer = getattr(tok, "tokenizer", tok)  # a VLM processor holds its tokenizer
        self.eos_ids, self.budget = spec.eos_ids(trainer), spec.budget(trainer)
        self.capture = hooks.Capture(on_error=self._hook_error)
        self.checkpoints: list[int] = []
        self.stopped_at: int | None = None
        self._errors: set[str] = set()
        self.watcher: Watcher | None = None
        if settings.mode != "off":
            config = dataclasses.replace(settings.watch, mode=settings.mode)
            self.watcher = Watcher(config, recorder=recorder, knobs=TRLKnobs(trainer, spec.knob, recorder),
                                   logger=_TrainerWandb() if _reports_to_wandb(trainer) else None,
                                   run_name=os.path.basename(os.fspath(recorder.run_dir)),
                                   run_config=_watch_context(trainer, spec), checkpoints=lambda: self.checkpoints)
        self._closed = False
        self._row: tuple[int, dict[str, float]] | None = None  # this step's metrics row until TRL's logs join it
        self._names = hooks.install(trainer, spec, self.capture) + hooks.wrap_train(trainer, self._failed)
        trainer.add_callback(_callback(self))

    # ------------------------------------------------------------------------------------ per step
    def step_end(self, step: int, control: Any) -> None:
        if self._closed:
            return
        rollouts, off_policy = self.capture.take()
        row = {"trl/onpolicy_batches": float(len(rollouts)), "trl/offpolicy_batches": float(off_policy)}
        if self.spec.knob is not None:
            row[f"trl/{self.spec.knob}"] = float(getattr(self.trainer, self.spec.knob))
        if rollouts:  # else all golden this step: nothing for the detector to read
            row = self._record(step, rollouts, row)
            self._watch(step, row, control)
        # The trainer logs this step right after on_step_end when should_log: its logs then join the row and it
        # is written once (each write of the step row also rewrites the manifest, two fsyncs)
        self._row = (step, row)
        if not control.should_log:
            self._flush()

    def _watch(self, step: int, summary: dict[str, float], control: Any) -> None:
        if self.watcher is None:
            return
        self.watcher.knobs.step = step
        state, decisions = self.watcher.step(step, summary)
        if state is None or not state.escalated:
            return
        if self.settings.on_trouble is not None:
            self.settings.on_trouble(self.trainer, state, decisions)
        stop_at = self._stop_level()
        if self.settings.mode == "act" and stop_at != "never" and LEVELS.index(state.level) >= LEVELS.index(stop_at):
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = step
            why = f"{type(self.trainer).__name__} has no on-policy knob" if self.spec.knob is None else "stop_at"
            self.recorder.event("intervention", step=step, action="stop", level=state.level,
                                message=f"detector {state.level}: saved a checkpoint and stopped training ({why})")

    def _flush(self) -> None:
        if self._row is not None:
            step, row = self._row
            self._row = None
            self.recorder.log_metrics(step, "train", row)

    def _record(self, step: int, rollouts: list[hooks.Rollouts], metrics: dict[str, float]) -> dict[str, float]:
        prompts = [p for r in rollouts for p in r.prompt_ids]
        responses = [x for r in rollouts for x in r.response_ids]
        keys = [prompt_key(p) for p in prompts]
        seen: Counter[str] = Counter()
        sample_index = []
        for k in keys:
            sample_index.append(seen[k])
            seen[k] += 1
        return self.recorder.record_step(
            step, token_ids=responses, finish_reasons=finish_reasons(responses, self.eos_ids, self.budget),
            texts=self.tokenizer.batch_decode(responses, skip_special_tokens=True),
            student_logp=[x for r in rollouts for x in r.student_logp],
            teacher_logp=[x for r in rollouts for x in r.teacher_logp],
            loss_mask=[x for r in rollouts for x in r.loss_mask], source="onpolicy", prompt_ids=keys,
            sample_index=sample_index,
            # the prompt as the model saw it, special tokens included: re-encoding it gives the context back
            prompt_texts=self.tokenizer.batch_decode(prompts, skip_special_tokens=False), metrics=metrics,
            write_metrics=False)

    def _stop_level(self) -> str:
        if self.settings.stop_at != "auto":
            return self.settings.stop_at
        return "alarm" if self.spec.knob is None and self.settings.on_trouble is None else "never"

    def log(self, step: int, logs: dict[str, Any]) -> None:
        if self._closed or step <= 0:
            return
        numbers = {f"trl/{k}": float(v) for k, v in logs.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self._row is not None and self._row[0] == step:
            self._row[1].update(numbers)
            self._flush()
        elif numbers:
            self._flush()
            self.recorder.log_metrics(step, "train", numbers)

    def saved(self, step: int, output_dir: str) -> None:
        if self._closed:
            return
        self.checkpoints.append(step)
        self.recorder.event("checkpoint", step=step, message="TRL saved a checkpoint",
                            path=os.path.join(output_dir, f"checkpoint-{step}"))

    # ---------------------------------------------------------------------------------- lifecycle
    def close(self, status: str = "finished") -> None:
        """Finish the run (status "finished" or "failed") and remove the hooks; idempotent."""
        if self._closed:
            return
        self._flush()
        self._closed = True
        if self.watcher is not None:
            self.watcher.close()
        self.recorder.close(status)
        # the callback stays registered (this may run inside the trainer's loop over its callbacks) but is inert
        hooks.uninstall(self.trainer, self._names)

    def _failed(self, exc: BaseException) -> None:
        self.recorder.event("error", message=f"{type(exc).__name__}: {exc}"[:500])
        self.close("failed")

    def _hook_error(self, where: str, exc: BaseException) -> None:
        if self.settings.strict:
            raise exc
        if where not in self._errors:  # once per hook: a broken hook would otherwise write an event per batch
            self._errors.add(where)
            self.recorder.event("error", step=int(self.trainer.state.global_step) + 1,
                                message=f"opdwatch TRL hook {where} failed, batch not recorded: "
                                        f"{type(exc).__name__}: {exc}"[:500])


def attach(trainer: Any, run_dir: str | os.PathLike[str], watch: str | TRLWatch | None = "warn", *,
           settings: RecorderSettings | None = None) -> Attachment:
    """Record ``trainer``'s on-policy rollouts into a new run at ``run_dir`` and watch them (see the module
    docstring). Call before ``trainer.train()``; the run is finished when training ends (or marked failed)."""
    config = TRLWatch(mode="off" if watch is None else watch) if not isinstance(watch, TRLWatch) else watch
    config.validate()
    if hooks.installed(trainer):  # wrapping the wrappers would record every batch twice
        raise OpdwatchError(f"this {type(trainer).__name__} is already attached to a run")
    spec = hooks.spec_for(trainer)  # the supported class, its methods checked, or a one-line error
    processes = int(getattr(getattr(trainer, "accelerator", None), "num_processes", 1))
    if processes > 1:  # each rank would need its own recorder rank and an all-reduce of the step partials
        raise OpdwatchError(f"attach supports single-process training only, this trainer runs {processes} processes")
    tok = trainer.processing_class
    tok = getattr(tok, "tokenizer", tok)
    recorder = Recorder.create(run_dir, config=_run_config(trainer, spec), settings=settings,
                               tokenizer_info={"eos_token_ids": spec.eos_ids(trainer),
                                               "special_token_ids": sorted(int(i) for i in tok.all_special_ids),
                                               "name": str(getattr(tok, "name_or_path", ""))})
    return Attachment(trainer, spec, recorder, config)


# -------------------------------------------------------------------------------------------- helpers
def _run_config(trainer: Any, spec: hooks.HookSpec) -> dict[str, Any]:
    args = json.loads(json.dumps(trainer.args.to_dict(), default=str))  # enums, paths: as text
    return {"source": "trl", "trl": {"version": hooks.trl_version(), "trainer": type(trainer).__name__,
                                     "kind": spec.kind, "args": args}}


def _watch_context(trainer: Any, spec: hooks.HookSpec) -> dict[str, Any]:
    """What the alerts may quote (opdwatch.alerts.recommend reads the learning rate and TRL's lmbda)."""
    context = {"trl_trainer": type(trainer).__name__, "learning_rate": float(trainer.args.learning_rate)}
    if spec.knob is not None:
        context[spec.knob] = float(getattr(trainer, spec.knob))
    return context


def _reports_to_wandb(trainer: Any) -> bool:
    report_to = trainer.args.report_to or []
    return "wandb" in ([report_to] if isinstance(report_to, str) else report_to)


class _TrainerWandb:
    """The trainer's own wandb run (transformers' WandbCallback starts it), found at each call: detector
    statistics are logged against ``train/global_step`` (the step axis TRL's charts use, never wandb's own step,
    which the callback advances), alerts go out as ``run.alert``."""

    @property
    def run(self) -> Any:
        import wandb  # the trainer reports to wandb, so it is installed

        return wandb.run

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self.run is not None:
            self.run.log({**{f"opdwatch/{k}": float(v) for k, v in metrics.items()}, "train/global_step": step})

    def alert(self, title: str, text: str, *, level: str = "WARN", wait_seconds: float | None = None) -> bool:
        import wandb

        if self.run is None:
            return False
        kwargs: dict[str, Any] = {"title": title, "text": text, "level": getattr(wandb.AlertLevel, level)}
        if wait_seconds is not None:
            kwargs["wait_duration"] = wait_seconds
        self.run.alert(**kwargs)
        return True

    def close(self) -> None:
        pass  # the trainer's run: the trainer finishes it


def _callback(attachment: Attachment) -> Any:
    from transformers import TrainerCallback

    class OpdwatchCallback(TrainerCallback):  # transformers' callback interface: no-op defaults for every event
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            attachment.step_end(int(state.global_step), control)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
                   **kwargs: Any) -> None:
            attachment.log(int(state.global_step), logs or {})

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            attachment.saved(int(state.global_step), args.output_dir)

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            attachment.close("finished")

    return OpdwatchCallback()
