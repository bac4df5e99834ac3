"""The trainer's configuration: one frozen dataclass tree, loaded from YAML plus `key=value` overrides.

`load_config(path, overrides)` resolves and validates everything before any model is loaded; every bad
value raises `OpdwatchError` with one line naming its dotted key (the CLI turns it into exit code 2).
Parsing, typing and the override path are opdwatch.config_tree's, shared with `opdwatch detect`; each section
validates its own fields in `validate()`, and `TrainConfig.validate()` checks what spans sections.
`config_to_dict` gives the resolved tree that goes into the run manifest.

Torch-free (`opdwatch train` validates a config before the trainer's heavy imports) and importing nothing else
of the trainer: the names of the rollout engines and the estimators are listed here, and a test keeps them equal
to their registries (rollout/engines.py ENGINES, objectives/variants.py ESTIMATORS), which import torch.
Presets are looked up by name in two folders: trainer/configs (real runs) and the demo recipe's
trainer/recipes/demo/configs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from opdwatch.config_tree import build, load_yaml, merge, nest, parse_assignments, to_dict
from opdwatch.config_tree import with_overrides as _with_overrides
from opdwatch.detector.settings import WatchConfig  # torch-free, shared with opdwatch detect
from opdwatch.errors import OpdwatchError
from opdwatch.loggers import WandbConfig
from opdwatch.recorder import RecorderSettings

ENGINE_KINDS = ("hf", "vllm")  # keys of rollout.engines.ENGINES
ESTIMATOR_NAMES = ("sampled_token", "topk_reverse_kl")  # keys of objectives.variants.ESTIMATORS


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise OpdwatchError(message)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _check_run_name(name: str) -> None:
    # run_dir is output_dir / name: anything but one plain component would put the run elsewhere ("..": into
    # the parent of output_dir) or hide it from the readers (a leading dot marks temp and hidden files)
    plain = (bool(name.strip()) and not name.startswith(".") and "/" not in name and "\\" not in name
             and not _CONTROL.search(name))
    _check(plain, f"name={name!r}: must be one directory name under run.output_dir (not empty, no / or \\, "
                  "no control characters, not starting with '.')")


@dataclass(frozen=True)
class RunConfig:
    # Run
    name: str = "opd"  # run directory name under output_dir
    output_dir: str = "runs"  # parent directory of run directories
    seed: int = 0  # seeds model init of the demo student's OPD sampling, prompt order and torch
    threads: int = 2  # torch.set_num_threads; the trajectory depends on it (float summation order)
    progress: bool = True  # show a progress bar

    def validate(self) -> None:
        _check_run_name(self.name)
        _check(self.threads >= 1, f"threads={self.threads}: must be >= 1")


@dataclass(frozen=True)
class DataConfig:
    # Data
    source: str = "synthetic"  # "synthetic" or a JSONL/Parquet file of question|problem, solution, answer
    val_path: str = ""  # optional separate validation file (file sources only)
    seed: int = 1234  # data generation/shuffle seed, kept apart from run.seed so seeds share data
    sft_size: int = 20000  # synthetic: golden examples for SFT (demo models and warm-up)
    opd_size: int = 5000  # synthetic: OPD prompts (with golden solutions for the SFT mixture term)
    val_size: int = 256  # held-out validation prompts
    min_ops: int = 1  # synthetic: fewest operations per question
    max_ops: int = 4  # synthetic: most operations per question
    sft_fraction: float = 0.5  # file sources: share of non-validation records used for SFT

    def validate(self) -> None:
        _check(self.source == "synthetic" or Path(self.source).exists(),
               f"source={self.source!r}: not 'synthetic' and no such file")
        _check(self.min_ops >= 1 and self.max_ops >= self.min_ops,
               f"min_ops/max_ops={self.min_ops}/{self.max_ops}: need 1 <= min_ops <= max_ops")
        for name in ("sft_size", "opd_size", "val_size"):
            _check(getattr(self, name) >= 1, f"{name}={getattr(self, name)}: must be >= 1")
        _check(0.0 <= self.sft_fraction < 1.0, f"sft_fraction={self.sft_fraction}: must be in [0, 1)")


@dataclass(frozen=True)
class ModelsConfig:
    # Models
    student: str = "demo"  # "demo" (cached tiny SFT'd student) or a local path / hub id
    teacher: str = "demo"  # "demo" (cached tiny teacher with a copy prior) or a local path / hub id
    reference: str = "student"  # "student" = frozen copy of the initial student, or a path / hub id
    cache_dir: str = ""  # demo model cache; "" means $OPDWATCH_CACHE or ~/.cache/opdwatch/demo


@dataclass(frozen=True)
class TinyModelConfig:
    # Tiny demo model: architecture
    hidden: int = 64  # hidden size
    layers: int = 2  # transformer layers
    heads: int = 4  # attention heads
    intermediate: int = 128  # MLP width
    init_seed: int = 0  # weight init seed
    # Tiny demo model: recipe
    sft_steps: int = 400  # golden SFT steps
    sft_lr: float = 3e-3  # golden SFT peak learning rate
    batch_size: int = 32  # SFT batch size
    copy_steps: int = 0  # copy-prior fine-tune steps (teacher only; see docs/trainer.md)
    copy_lr: float = 1e-3  # copy-prior fine-tune learning rate
    copy_fraction: float = 0.25  # share of repetitive documents in copy-prior batches
    copy_chunk_min: int = 3  # shortest repeated chunk (characters)
    copy_chunk_max: int = 14  # longest repeated chunk (characters)

    def validate(self) -> None:
        _check(self.hidden >= 1 and self.layers >= 1 and self.heads >= 1 and self.hidden % self.heads == 0,
               f"hidden={self.hidden} must be a positive multiple of heads={self.heads}")
        _check(self.sft_steps >= 0 and self.copy_steps >= 0, "sft_steps and copy_steps must be >= 0")
        _check(0.0 <= self.copy_fraction <= 1.0, f"copy_fraction={self.copy_fraction}: must be in [0, 1]")
        _check(1 <= self.copy_chunk_min <= self.copy_chunk_max,
               f"copy_chunk_min/copy_chunk_max={self.copy_chunk_min}/{self.copy_chunk_max}: need "
               "1 <= copy_chunk_min <= copy_chunk_max")


def _teacher_default() -> TinyModelConfig:
    return TinyModelConfig(hidden=128, layers=4, intermediate=384, sft_steps=800, copy_steps=400, copy_fraction=0.3)


@dataclass(frozen=True)
class DemoConfig:
    # Demo models (used when models.student / models.teacher are "demo")
    student: TinyModelConfig = field(default_factory=TinyModelConfig)  # the weak student
    teacher: TinyModelConfig = field(default_factory=_teacher_default)  # the strong teacher with a copy prior


@dataclass(frozen=True)
class WarmupConfig:
    # SFT warm-up of the student inside the run (before OPD)
    steps: int = 0  # 0 disables it (the demo student is already SFT'd)
    lr: float = 3e-3  # peak learning rate
    batch_size: int = 32  # golden examples per step

    def validate(self) -> None:
        _check(self.steps >= 0 and self.lr > 0, "steps must be >= 0 and lr > 0")


@dataclass(frozen=True)
class RolloutConfig:
    # Rollouts
    prompts_per_step: int = 16  # prompts per OPD step
    samples_per_prompt: int = 4  # rollouts per prompt
    temperature: float = 1.0  # sampling temperature
    top_p: float = 1.0  # nucleus mass (1.0 = off)
    max_new_tokens: int = 128  # generation budget; hitting it without EOS is a truncation
    # per-rollout random streams (inverse-CDF sampling on uniforms indexed by the global rollout number): samples
    # do not depend on how rollouts are split over ranks, so a torchrun run reproduces a one-process run
    counter_rng: bool = False

    def validate(self) -> None:
        _check(self.prompts_per_step >= 1 and self.samples_per_prompt >= 1,
               "prompts_per_step and samples_per_prompt must be >= 1")
        _check(self.temperature > 0, f"temperature={self.temperature}: must be > 0 (OPD samples from the student)")
        _check(0.0 < self.top_p <= 1.0, f"top_p={self.top_p}: must be in (0, 1]")
        _check(self.max_new_tokens >= 1, f"max_new_tokens={self.max_new_tokens}: must be >= 1")


@dataclass(frozen=True)
class ObjectiveConfig:
    # Objective variant (Revisiting OPD; docs/scale.md)
    estimator: str = "sampled_token"  # key of objectives.variants.ESTIMATORS: sampled_token | topk_reverse_kl
    topk: int = 32  # teacher support size K of topk_reverse_kl
    mask_special_tokens: bool = False  # chat-template and other special tokens get no loss (EOS keeps it)

    def validate(self) -> None:
        _check(self.estimator in ESTIMATOR_NAMES,
               f"estimator={self.estimator!r}: one of {', '.join(sorted(ESTIMATOR_NAMES))}")
        _check(self.topk >= 1, f"topk={self.topk}: must be >= 1")


@dataclass(frozen=True)
class TokensConfig:
    # Student/teacher tokenizers (EOS canonicalisation, data.eos_canon)
    eos_map: str = ""  # "" = EOS and specials must agree; "auto"; or "student:teacher" pairs (ids or token strings)


@dataclass(frozen=True)
class EngineConfig:
    # Rollout engine
    kind: str = "hf"  # key of rollout.engines.ENGINES: hf (transformers) | vllm (GPU, optional extra)
    dtype: str = "bfloat16"  # vllm: weight dtype of the rollout copy
    gpu_memory_utilization: float = 0.4  # vllm: share of GPU memory for weights + KV cache (colocated training)
    # hf: decode Llama/Qwen2 models with rollout.fast_decode (same math, ~2x tokens/s); false = the HF forward loop
    fast_decode: bool = True

    def validate(self) -> None:
        _check(self.kind in ENGINE_KINDS, f"kind={self.kind!r}: one of {', '.join(sorted(ENGINE_KINDS))}")
        _check(0 < self.gpu_memory_utilization <= 1,
               f"gpu_memory_utilization={self.gpu_memory_utilization}: must be in (0, 1]")


@dataclass(frozen=True)
class DistributedConfig:
    # Multi-process training under torchrun (parallel.distributed; one process ignores this section)
    # shard the student with FSDP2 (parallel.fsdp) instead of one full replica per rank; for students that do
    # not fit one device. Rollouts then come from an unsharded copy (hf engine) or vLLM's own weights
    fsdp: bool = False


@dataclass(frozen=True)
class OPDConfig:
    # OPD optimisation
    steps: int = 50  # OPD steps
    lr: float = 3e-3  # Adam learning rate (constant after warm-up)
    warmup_steps: int = 0  # linear lr warm-up over the first N steps (Adam's first updates move every weight by ~lr)
    clip_eps: float = 0.2  # PPO clip epsilon
    minibatches: int = 2  # optimizer updates per step (rollouts split by prompt)
    grad_clip: float = 1.0  # max gradient norm
    beta: float = 0.0  # initial weight of KL(student || reference); Stable-OPD uses > 0
    alpha: float = 0.0  # initial weight of golden SFT NLL; Stable-OPD uses > 0
    # memory bounds at scale (0 = whole batch at once); the update is the same, only summation order changes
    score_chunk_rows: int = 0  # rollouts per scoring forward (student pi_old, teacher, reference)
    micro_rows: int = 0  # rollouts per forward/backward inside a minibatch (gradient accumulation); > 0 also
    # recomputes reference logits per micro-batch instead of keeping (B, T, V) of them

    def validate(self) -> None:
        _check(self.steps >= 0, f"steps={self.steps}: must be >= 0")
        _check(math.isfinite(self.lr) and self.lr > 0, f"lr={self.lr}: must be a positive number")
        _check(self.warmup_steps >= 0, f"warmup_steps={self.warmup_steps}: must be >= 0")
        _check(0.0 < self.clip_eps < 1.0, f"clip_eps={self.clip_eps}: must be in (0, 1)")
        _check(self.minibatches >= 1, f"minibatches={self.minibatches}: must be >= 1")
        _check(self.grad_clip > 0, f"grad_clip={self.grad_clip}: must be > 0")
        _check(self.beta >= 0 and self.alpha >= 0, f"beta={self.beta}, alpha={self.alpha}: must be >= 0")
        _check(self.score_chunk_rows >= 0 and self.micro_rows >= 0, "score_chunk_rows and micro_rows must be >= 0")


@dataclass(frozen=True)
class ValConfig:
    # Validation
    every: int = 5  # validate every N OPD steps (and at step 0 and the last step); 0 disables
    num_prompts: int = 128  # held-out prompts per validation
    temperature: float = 1.0  # sampled, like the paper's avg@k
    max_new_tokens: int = 128  # generation budget
    # also validate greedily on the same prompts (val/greedy/accuracy, val/greedy/truncation_rate in the val row):
    # a student can lose sampled accuracy (its distribution spreads) while its mode stays right
    greedy_too: bool = False

    def validate(self) -> None:
        _check(self.every >= 0 and self.num_prompts >= 1, "every must be >= 0 and num_prompts >= 1")
        _check(self.temperature >= 0, f"temperature={self.temperature}: must be >= 0 (0 = greedy)")
        _check(self.max_new_tokens >= 1, f"max_new_tokens={self.max_new_tokens}: must be >= 1")


@dataclass(frozen=True)
class CheckpointConfig:
    # Checkpoints
    every: int = 25  # checkpoint every N steps (and at the end); 0 = only at the end
    keep: int = 2  # most recent checkpoints kept

    def validate(self) -> None:
        _check(self.every >= 0 and self.keep >= 1, "every must be >= 0 and keep >= 1")


def _recorder_default() -> RecorderSettings:
    # The demo's responses are <= 128 characters, so the paper's 10k-character tail window (RecorderSettings'
    # default, for real models) would never fill: the trainer defaults to the window and threshold its presets
    # use (golden texts have zlib ratio >= 0.89, verbatim loops 0.29-0.31).
    return RecorderSettings(tail_window=64, tail_threshold=0.5)


PROBE_CHUNKS = ("line", "sentence", "window")  # keys of opdwatch.probe.counterfactual.CHUNKERS


@dataclass(frozen=True)
class ProbeConfig:
    # In-run probe of the loop incentive (trainer/loop/probe.py, docs/probe.md): probe/... step metrics
    every: int = 0  # score the probe set every N OPD steps; 0 = off
    num_prompts: int = 16  # validation prompts whose golden solutions make the fixed probe set
    copies: int = 4  # occurrences of each response's last chunk in its loop (its own, then copies - 1 repeats)
    chunk: str = "sentence"  # what repeats: the last line | sentence | window of `window` tokens
    window: int = 8  # window chunk length (and the fallback when a response has no sentence end)
    batch_size: int = 16  # probe rows per forward
    # also loops of a mid-solution sentence (each golden solution cut after the sentence end nearest its middle),
    # recorded as probe/middle/... beside probe/...: collapsing students loop inside the solution (docs/probe.md)
    middle: bool = False

    def validate(self) -> None:
        _check(self.every >= 0 and self.num_prompts >= 1 and self.batch_size >= 1 and self.window >= 1,
               "every must be >= 0; num_prompts, batch_size and window >= 1")
        _check(self.copies >= 2, f"copies={self.copies}: must be >= 2")
        _check(self.chunk in PROBE_CHUNKS, f"chunk={self.chunk!r}: one of {', '.join(PROBE_CHUNKS)}")


@dataclass(frozen=True)
class LogConfig:
    # Where step metrics go besides the run directory (opdwatch.loggers), whatever watch.mode is
    wandb: WandbConfig = field(default_factory=WandbConfig)  # a wandb run (rank 0); the watch's alerts go there too


@dataclass(frozen=True)
class TrainConfig:
    run: RunConfig = field(default_factory=RunConfig)  # run directory, seeds, threads
    data: DataConfig = field(default_factory=DataConfig)  # the task's data
    models: ModelsConfig = field(default_factory=ModelsConfig)  # student, teacher, reference
    demo: DemoConfig = field(default_factory=DemoConfig)  # recipes of the demo models
    warmup: WarmupConfig = field(default_factory=WarmupConfig)  # SFT warm-up before OPD
    rollout: RolloutConfig = field(default_factory=RolloutConfig)  # sampling
    opd: OPDConfig = field(default_factory=OPDConfig)  # optimisation
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)  # the distillation term's estimator
    tokens: TokensConfig = field(default_factory=TokensConfig)  # student/teacher tokenizer mapping
    engine: EngineConfig = field(default_factory=EngineConfig)  # rollout engine
    distributed: DistributedConfig = field(default_factory=DistributedConfig)  # torchrun / FSDP
    val: ValConfig = field(default_factory=ValConfig)  # validation
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)  # checkpoints
    recorder: RecorderSettings = field(default_factory=_recorder_default)  # the run recorder's settings
    # early-warning detector + interventions (docs/detector.md); mode off | warn | act
    watch: WatchConfig = field(default_factory=WatchConfig)
    log: LogConfig = field(default_factory=LogConfig)  # metric loggers (wandb)
    probe: ProbeConfig = field(default_factory=ProbeConfig)  # in-run probe of the loop incentive (docs/probe.md)

    @property
    def run_dir(self) -> Path:
        return Path(self.run.output_dir) / self.run.name

    @property
    def wandb(self) -> WandbConfig:
        """The wandb run to log into: `log.wandb`, or else the older place `watch.wandb` (its enabled,
        project, entity and mode; presets written before `log:` existed still turn wandb on that way)."""
        if self.log.wandb.enabled or not self.watch.wandb.enabled:
            return self.log.wandb
        w = self.watch.wandb
        return WandbConfig(enabled=True, project=w.project, entity=w.entity, mode=w.mode)

    def validate(self) -> None:
        """Checks that span sections (each section has checked its own fields already)."""
        o, r = self.opd, self.rollout
        _check(o.minibatches <= r.prompts_per_step,
               f"opd.minibatches={o.minibatches}: must be in [1, rollout.prompts_per_step={r.prompts_per_step}]")


def config_to_dict(config: Any) -> dict[str, Any]:
    return to_dict(config)


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`["opd.lr=1e-3", "run.name=x"]` -> nested dict; values are parsed as YAML scalars."""
    return nest(parse_assignments(overrides))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML preset (or defaults when `path` is None), apply overrides, validate."""
    tree = {} if path is None else read_yaml(resolve_preset(path))
    return build(TrainConfig, merge(tree, parse_overrides(overrides or [])))


def with_overrides(config: TrainConfig, overrides: list[str] | Mapping[str, Any]) -> TrainConfig:
    """A copy of `config` with `key=value` strings (or a `{dotted key: value}` mapping) applied and validated."""
    flat = parse_assignments(overrides) if isinstance(overrides, list) else overrides
    return _with_overrides(config, flat)


def read_yaml(path: Path) -> dict[str, Any]:
    """The mapping of sections in a YAML config file; an empty file (or only comments) is ``{}``."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:  # a directory, unreadable, not text
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise OpdwatchError(f"config file {path}: cannot be read ({reason})") from None
    try:
        tree = load_yaml(text)  # as `key=value` values are read (opdwatch.config_tree)
    except yaml.YAMLError as exc:
        raise OpdwatchError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):  # not `or {}`: a file holding 0 or false is a mistake, not "no config"
        raise OpdwatchError(f"config file {path}: the top level must be a mapping of sections (run:, opd:, ...), "
                            f"got {type(tree).__name__}")
    return tree


PRESETS_DIR = Path(__file__).parent / "configs"  # real-run presets (HF models, GPUs)
# The demo recipe's presets: found by name like the others, but only paths here, so the config imports no recipe
DEMO_PRESETS_DIR = Path(__file__).parent / "recipes" / "demo" / "configs"
PRESET_DIRS = (PRESETS_DIR, DEMO_PRESETS_DIR)


def resolve_preset(path: str | Path) -> Path:
    """A YAML path, or the name of a shipped preset (``demo_stable_opd``, ``gpu_qwen1p5b_r1distill7b``) in one of
    PRESET_DIRS, so the presets work from any directory and from a wheel install."""
    path = Path(path)
    if path.exists():
        return path
    name = f"{path.name.removesuffix('.yaml')}.yaml"
    for folder in PRESET_DIRS:
        if path.parent == Path(".") and (folder / name).exists():
            return folder / name
    known = ", ".join(sorted(p.stem for folder in PRESET_DIRS for p in folder.glob("*.yaml")))
    raise OpdwatchError(f"config file not found: {path} (presets: {known})")
