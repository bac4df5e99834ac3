"""Every wrap of a TRL trainer method that opdwatch makes, in one place, checked against the installed TRL.

TRL's callbacks never see a batch, tokens or log-probs, so opdwatch replaces a few bound methods on the trainer
*instance* (the class is untouched; :func:`uninstall` removes them). Each wrapper calls the original with the same
arguments and returns its result unchanged; on the side it copies what it saw into a :class:`Capture`. Which
methods, verified against TRL 1.16.0 (docs/integrations.md cites them):

* ``DistillationTrainer`` (trl/trainer/distillation_trainer.py): ``_compute_loss(unwrapped_student, inputs, ...)``
  gets one micro-batch's ``prompt_ids``/``completion_ids``/``completion_mask`` (its on-policy generations);
  inside it ``_get_last_hidden_state(model, input_ids, attention_mask, logits_to_keep)`` runs once for the
  student and once for the teacher. The wrapper projects those hidden states through each model's output
  embedding a chunk at a time and keeps the sampled tokens' log-probs (the loss itself never builds logits).
* ``GKDTrainer`` (trl/experimental/gkd/gkd_trainer.py): ``generate_on_policy_outputs(model, inputs, config)``
  marks a micro-batch on-policy (when ``model`` is the student: ``seq_kd`` samples from the teacher) and
  returns its token ids, attention mask and labels; ``generalized_jsd_loss(student_logits, teacher_logits,
  labels, ..., temperature)`` then gets both models' shifted logits for it. ``training_step`` clears the mark.
* ``GOLDTrainer`` (trl/experimental/gold/gold_trainer.py): ``_prepare_inputs`` returns the buffered micro-batch
  and ``_buffered_on_policy[(_step - 1) % gradient_accumulation_steps]`` says whether ``_fill_buffer``
  generated it on-policy; ``generalized_jsd_loss`` as for GKD.
* every trainer: ``train``, so that an exception marks the run failed before it propagates (:func:`wrap_train`).

A TRL version that renamed one of these or changed a parameter this code passes by name fails at ``attach`` with
one line (:func:`check`), never later inside a training step. Torch is only touched inside the wrappers; the
batches become rollouts in opdwatch.integrations._trl_batches.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any

from opdwatch.errors import OpdwatchError
from opdwatch.integrations._logprobs import LogitPost, sampled_logp_from_hidden, sampled_logp_from_logits
from opdwatch.integrations._trl_batches import Rollouts, distillation_rollouts, labelled_rollouts, post_of

TESTED = "1.16"  # the TRL minor release these wraps were verified against (pyproject extra `trl`)


@dataclass
class Capture:
    """What the wrapped methods saw since the last :meth:`take` (one optimizer step)."""
    on_error: Callable[[str, BaseException], None]  # our own failure inside a wrapper: record it (strict: raise)
    rollouts: list[Rollouts] = field(default_factory=list)
    off_policy: int = 0  # micro-batches trained on dataset (golden) completions this step
    pending: Any = None  # GKD/GOLD: (input_ids, attention_mask, labels) of the on-policy micro-batch in flight
    context: dict[str, Any] | None = None  # DistillationTrainer: the micro-batch inside _compute_loss

    @contextmanager
    def guard(self, where: str) -> Iterator[None]:
        try:
            yield
        except Exception as exc:  # the training step goes on without this micro-batch's record
            self.on_error(where, exc)

    def take(self) -> tuple[list[Rollouts], int]:
        rollouts, off = self.rollouts, self.off_policy
        self.rollouts, self.off_policy = [], 0
        return rollouts, off


@dataclass(frozen=True)
class HookSpec:
    kind: str  # "distillation", "gkd" or "gold"
    module: str  # where the trainer class lives
    cls: str  # the trainer class
    methods: dict[str, tuple[str, ...]]  # wrapped (or called) methods -> parameter names relied on
    attributes: tuple[str, ...]  # instance attributes read
    install: Callable[[Any, Capture], tuple[str, ...]]  # wraps the methods, returns their names
    knob: str | None  # the attribute that sets the on-policy fraction (None: the trainer has none)
    eos_ids: Callable[[Any], list[int]]  # the token ids that end a rollout
    budget: Callable[[Any], int]  # max response tokens
    unsupported: Callable[[Any], str | None]  # why this trainer's configuration cannot be recorded, or None

    def trainer_class(self) -> type | None:
        try:
            return getattr(import_module(self.module), self.cls)
        except (ImportError, AttributeError):
            return None


# ------------------------------------------------------------------------------------------ helpers
def _ids(value: Any) -> list[int]:
    return [] if value is None else [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


def _is_training(trainer: Any) -> bool:
    return bool(getattr(trainer.model, "training", False))


def _set(trainer: Any, name: str, fn: Callable[..., Any]) -> str:
    setattr(trainer, name, fn)  # an instance attribute shadows the class's method for `self.name(...)` calls
    return name


# --------------------------------------------------------------------------- GKD and GOLD: the JSD loss
def _wrap_jsd(trainer: Any, cap: Capture) -> str:
    original = trainer.generalized_jsd_loss
    signature = inspect.signature(original)

    def generalized_jsd_loss(*args: Any, **kwargs: Any) -> Any:
        if _is_training(trainer):
            with cap.guard("generalized_jsd_loss"):
                _record_jsd(cap, signature.bind(*args, **kwargs))
        return original(*args, **kwargs)

    return _set(trainer, "generalized_jsd_loss", generalized_jsd_loss)


def _record_jsd(cap: Capture, bound: inspect.BoundArguments) -> None:
    bound.apply_defaults()
    pending, cap.pending = cap.pending, None
    if pending is None:
        cap.off_policy += 1
        return
    a = bound.arguments
    labels_BT = a["labels"]  # (B, T-1) shifted labels, -100 on the prompt and after EOS
    valid_BT = labels_BT != -100
    post = LogitPost(temperature=float(a["temperature"]))
    ids_BT = labels_BT.clamp_min(0)
    s_N = sampled_logp_from_logits(a["student_logits"], ids_BT, valid_BT, post=post)
    t_N = sampled_logp_from_logits(a["teacher_logits"], ids_BT, valid_BT, post=post)
    cap.rollouts.append(labelled_rollouts(*pending, valid_BT.sum(1).tolist(), s_N, t_N))


def _install_gkd(trainer: Any, cap: Capture) -> tuple[str, ...]:
    generate, step = trainer.generate_on_policy_outputs, trainer.training_step
    teacher = trainer.teacher_model

    def generate_on_policy_outputs(model: Any, inputs: Any, generation_config: Any) -> Any:
        out = generate(model, inputs, generation_config)
        with cap.guard("generate_on_policy_outputs"):
            # seq_kd samples from the teacher: not the student's own rollouts
            student = model is not teacher and model is not trainer.accelerator.unwrap_model(teacher)
            # (no train-mode check: training_step calls this before Trainer.training_step puts the model in
            # train mode, and nothing else calls it)
            cap.pending = tuple(out[:3]) if student else None
        return out

    def training_step(*args: Any, **kwargs: Any) -> Any:
        cap.pending = None  # only this micro-batch's generation may pair with its loss
        return step(*args, **kwargs)

    return (_set(trainer, "generate_on_policy_outputs", generate_on_policy_outputs),
            _set(trainer, "training_step", training_step), _wrap_jsd(trainer, cap))


def _install_gold(trainer: Any, cap: Capture) -> tuple[str, ...]:
    prepare = trainer._prepare_inputs

    def _prepare_inputs(generation_batch: Any) -> Any:
        inputs = prepare(generation_batch)
        if _is_training(trainer):
            with cap.guard("_prepare_inputs"):
                flags = trainer._buffered_on_policy or []
                slot = (trainer._step - 1) % trainer.args.gradient_accumulation_steps
                on_policy = slot < len(flags) and bool(flags[slot])
                cap.pending = (inputs["input_ids"], inputs["attention_mask"], inputs["labels"]) if on_policy \
                    else None
        return inputs

    return _set(trainer, "_prepare_inputs", _prepare_inputs), _wrap_jsd(trainer, cap)


# ------------------------------------------------------------- DistillationTrainer: hidden states only
def _install_distillation(trainer: Any, cap: Capture) -> tuple[str, ...]:
    compute, hidden_of = trainer._compute_loss, trainer._get_last_hidden_state

    def _compute_loss(unwrapped_student: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        cap.context = {"student": unwrapped_student, "inputs": inputs, "logp": {}} if _is_training(trainer) \
            else None
        try:
            out = compute(unwrapped_student, inputs, *args, **kwargs)
        finally:
            context, cap.context = cap.context, None
        if context is not None:
            with cap.guard("_compute_loss"):
                cap.rollouts.append(distillation_rollouts(context))
        return out

    def _get_last_hidden_state(model: Any, input_ids: Any, attention_mask: Any, logits_to_keep: int,
                               *args: Any, **kwargs: Any) -> Any:
        hidden_BKH = hidden_of(model, input_ids, attention_mask, logits_to_keep, *args, **kwargs)
        context = cap.context
        if context is not None:
            with cap.guard("_get_last_hidden_state"):
                who = "student" if model is context["student"] else "teacher"
                valid_BK = context["inputs"]["completion_mask"].bool()
                context["logp"][who] = sampled_logp_from_hidden(
                    hidden_BKH, model.get_output_embeddings(), input_ids[:, -logits_to_keep:], valid_BK,
                    post=post_of(model.config, trainer.temperature))
        return hidden_BKH

    return (_set(trainer, "_compute_loss", _compute_loss),
            _set(trainer, "_get_last_hidden_state", _get_last_hidden_state))


# ------------------------------------------------------------------------------------------ the table
def _generation_eos(trainer: Any) -> list[int]:
    return _ids(trainer.generation_config.eos_token_id)


def _generation_budget(trainer: Any) -> int:
    return int(trainer.generation_config.max_new_tokens)


def _distillation_problem(trainer: Any) -> str | None:
    for model in (trainer.model, trainer.teacher_model):
        try:
            post_of(trainer.accelerator.unwrap_model(model).config, trainer.temperature)
        except OpdwatchError as exc:
            return str(exc)
    return None


def _lmbda_problem(trainer: Any) -> str | None:
    return None if float(trainer.lmbda) > 0 else f"lmbda={trainer.lmbda:g}: no batch is on-policy, nothing to watch"


def _gold_problem(trainer: Any) -> str | None:
    if trainer.use_uld_loss and getattr(trainer, "teacher_tokenizer", None) is not None:
        return "use_uld_loss with a teacher tokenizer: the teacher scores other tokens than the student sampled"
    return _lmbda_problem(trainer)


_JSD = ("student_logits", "teacher_logits", "labels", "temperature")
SPECS: tuple[HookSpec, ...] = (
    HookSpec("distillation", "trl", "DistillationTrainer",
             {"_compute_loss": ("unwrapped_student", "inputs"),
              "_get_last_hidden_state": ("unwrapped_model", "input_ids", "attention_mask", "logits_to_keep")},
             ("eos_token_ids", "max_completion_length", "temperature", "teacher_model"), _install_distillation,
             None, lambda t: _ids(t.eos_token_ids), lambda t: int(t.max_completion_length),
             _distillation_problem),
    HookSpec("gkd", "trl.experimental.gkd", "GKDTrainer",
             {"generalized_jsd_loss": _JSD, "generate_on_policy_outputs": ("model", "inputs", "generation_config"),
              "training_step": ("model", "inputs")},
             ("lmbda", "generation_config", "teacher_model"), _install_gkd,
             "lmbda", _generation_eos, _generation_budget, _lmbda_problem),
    HookSpec("gold", "trl.experimental.gold", "GOLDTrainer",
             {"generalized_jsd_loss": _JSD, "_prepare_inputs": ("generation_batch",), "_fill_buffer": ()},
             ("lmbda", "generation_config", "_buffered_on_policy", "_step", "use_uld_loss"), _install_gold,
             "lmbda", _generation_eos, _generation_budget, _gold_problem),
)


def trl_version() -> str:
    try:
        return str(import_module("trl").__version__)
    except ImportError:
        raise OpdwatchError("opdwatch.integrations.trl needs TRL: pip install 'opdwatch[trl]'") from None


def spec_for(trainer: Any) -> HookSpec:
    """The hook table row of ``trainer``'s class (a subclass counts), or a one-line error."""
    version = trl_version()
    for spec in SPECS:
        cls = spec.trainer_class()
        if cls is not None and isinstance(trainer, cls):
            check(trainer, spec, version)
            if problem := spec.unsupported(trainer):
                raise OpdwatchError(f"cannot watch this {spec.cls}: {problem}")
            return spec
    names = ", ".join(f"{s.module}.{s.cls}" for s in SPECS)
    raise OpdwatchError(f"{type(trainer).__name__} is not a trainer opdwatch can attach to (TRL {version}): "
                        f"supported are {names}")


def check(trainer: Any, spec: HookSpec, version: str) -> None:
    """Every wrapped method exists and takes the parameters relied on; every attribute read exists."""
    where = f"TRL {version} (opdwatch's hooks were verified against TRL {TESTED}.x)"
    for name, params in spec.methods.items():
        method = getattr(trainer, name, None)
        if not callable(method):
            raise OpdwatchError(f"{spec.cls}.{name} is missing in {where}: this TRL version changed the methods "
                                "opdwatch wraps")
        have = inspect.signature(method).parameters
        missing = [p for p in params if p not in have]
        if missing:
            raise OpdwatchError(f"{spec.cls}.{name} no longer takes {', '.join(missing)} in {where}: this TRL "
                                "version changed the methods opdwatch wraps")
    if missing := [a for a in spec.attributes if not hasattr(trainer, a)]:
        raise OpdwatchError(f"{spec.cls} has no attribute {', '.join(missing)} in {where}: this TRL version changed "
                            "the trainer opdwatch wraps")


_MARK = "_opdwatch_hooks"  # instance attribute naming the wrapped methods while they are installed


def install(trainer: Any, spec: HookSpec, cap: Capture) -> tuple[str, ...]:
    """Wrap ``trainer``'s methods; returns the names, for :func:`uninstall`."""
    names = spec.install(trainer, cap)
    setattr(trainer, _MARK, names)
    return names


def installed(trainer: Any) -> bool:
    return _MARK in getattr(trainer, "__dict__", {})


def wrap_train(trainer: Any, on_failure: Callable[[BaseException], None]) -> tuple[str, ...]:
    """``trainer.train`` that reports an exception (the run is then marked failed) before re-raising it."""
    train = trainer.train

    def wrapped_train(*args: Any, **kwargs: Any) -> Any:
        try:
            return train(*args, **kwargs)
        except BaseException as exc:
            on_failure(exc)
            raise

    return (_set(trainer, "train", wrapped_train),)


def uninstall(trainer: Any, names: tuple[str, ...]) -> None:
    for name in (*names, _MARK):
        trainer.__dict__.pop(name, None)
