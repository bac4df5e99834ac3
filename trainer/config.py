"""The trainer's configuration: one frozen dataclass tree, loaded from YAML plus `key=value` overrides.

`load_config(path, overrides)` resolves and validates everything before any model is loaded; every bad
value raises `OpdwatchError` with one line (the CLI turns it into exit code 2). `config_to_dict` gives the
resolved tree that
goes into the run manifest.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from opdwatch.detector.settings import WatchConfig  # torch-free, shared with opdwatch detect
from opdwatch.errors import OpdwatchError


@dataclass(frozen=True)
class RunConfig:
    # Run
    name: str = "opd"  # run directory name under output_dir
    output_dir: str = "runs"  # parent directory of run directories
    seed: int = 0  # seeds model init of the demo student's OPD sampling, prompt order and torch
    threads: int = 2  # torch.set_num_threads; the trajectory depends on it (float summation order)
    progress: bool = True  # show a progress bar


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


@dataclass(frozen=True)
class ObjectiveConfig:
    # Objective variant (Revisiting OPD; docs/scale.md)
    estimator: str = "sampled_token"  # key of trainer.variants.ESTIMATORS: sampled_token | topk_reverse_kl
    topk: int = 32  # teacher support size K of topk_reverse_kl
    mask_special_tokens: bool = False  # chat-template and other special tokens get no loss (EOS keeps it)


@dataclass(frozen=True)
class TokensConfig:
    # Student/teacher tokenizers (EOS canonicalisation, trainer.eos_canon)
    eos_map: str = ""  # "" = EOS and specials must agree; "auto"; or "student:teacher" pairs (ids or token strings)


@dataclass(frozen=True)
class EngineConfig:
    # Rollout engine
    kind: str = "hf"  # key of trainer.engines.ENGINES: hf (transformers) | vllm (GPU, optional extra)
    dtype: str = "bfloat16"  # vllm: weight dtype of the rollout copy
    gpu_memory_utilization: float = 0.4  # vllm: share of GPU memory for weights + KV cache (colocated training)
    # hf: decode Llama/Qwen2 models with trainer.fast_decode (same math, ~2x tokens/s); false = the HF forward loop
    fast_decode: bool = True


@dataclass(frozen=True)
class DistributedConfig:
    # Multi-process training under torchrun (trainer.distributed; one process ignores this section)
    # shard the student with FSDP2 (trainer.fsdp) instead of one full replica per rank; for students that do
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


@dataclass(frozen=True)
class ValConfig:
    # Validation
    every: int = 5  # validate every N OPD steps (and at step 0 and the last step); 0 disables
    num_prompts: int = 128  # held-out prompts per validation
    temperature: float = 1.0  # sampled, like the paper's avg@k
    max_new_tokens: int = 128  # generation budget


@dataclass(frozen=True)
class CheckpointConfig:
    # Checkpoints
    every: int = 25  # checkpoint every N steps (and at the end); 0 = only at the end
    keep: int = 2  # most recent checkpoints kept


@dataclass(frozen=True)
class RecorderConfig:
    # Recorder (opdwatch run format)
    tail_window: int = 64  # characters in the zlib tail window
    tail_threshold: float = 0.5  # zlib ratio below which a rollout is repetitive
    ngram_n: int = 5  # n of the repeated-n-gram token flag
    token_every_k_steps: int = 1  # write token rows every k steps
    token_rollout_fraction: float = 1.0  # share of rollouts whose token rows are written


@dataclass(frozen=True)
class TrainConfig:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    opd: OPDConfig = field(default_factory=OPDConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    tokens: TokensConfig = field(default_factory=TokensConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    val: ValConfig = field(default_factory=ValConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    recorder: RecorderConfig = field(default_factory=RecorderConfig)
    # early-warning detector + interventions (docs/detector.md); mode off | warn | act
    watch: WatchConfig = field(default_factory=WatchConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.run.output_dir) / self.run.name


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    """Instantiate dataclass `cls` from a nested dict, checking keys and coercing scalar types."""
    if not isinstance(data, dict):
        raise OpdwatchError(
            f"config section {where.rstrip('.') or 'root'!r} must be a mapping, got {type(data).__name__}"
        )
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    for key in data:
        if key not in known:  # f-string, not +: YAML reads a key such as 1 or null as a non-string
            raise OpdwatchError(f"unknown config key {f'{where}{key}'!r} (known: {', '.join(sorted(known))})")
    kwargs = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        hint, value, name = hints[f.name], data[f.name], where + f.name
        if dataclasses.is_dataclass(hint):
            kwargs[f.name] = _build(hint, value, name + ".")
        else:
            kwargs[f.name] = _coerce(value, hint, name)
    return cls(**kwargs)


def _coerce(value: Any, hint: type, name: str) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise OpdwatchError(f"config {name}={value!r}: expected {hint.__name__}")


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise OpdwatchError(f"override {dotted!r}: {part!r} is not a section")
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`["opd.lr=1e-3", "run.name=x"]` -> nested dict; values are parsed as YAML scalars."""
    tree: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise OpdwatchError(f"override {item!r} must look like key=value (e.g. opd.lr=1e-3)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        _set_dotted(tree, key.strip(), value)
    return tree


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = (
            _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML preset (or defaults when `path` is None), apply overrides, validate."""
    tree = {} if path is None else read_yaml(resolve_preset(path))
    tree = _merge(tree, parse_overrides(overrides or []))
    config = _build(TrainConfig, tree, "")
    validate(config)
    return config


def read_yaml(path: Path) -> dict[str, Any]:
    """The mapping of sections in a YAML config file; an empty file (or only comments) is ``{}``."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:  # a directory, unreadable, not text
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise OpdwatchError(f"config file {path}: cannot be read ({reason})") from None
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise OpdwatchError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):  # not `or {}`: a file holding 0 or false is a mistake, not "no config"
        raise OpdwatchError(f"config file {path}: the top level must be a mapping of sections (run:, opd:, ...), "
                            f"got {type(tree).__name__}")
    return tree


PRESETS_DIR = Path(__file__).parent / "configs"


def resolve_preset(path: str | Path) -> Path:
    """A YAML path, or the name of a preset in trainer/configs (``demo_stable_opd``), so the shipped presets
    work from any directory and from a wheel install."""
    path = Path(path)
    if path.exists():
        return path
    preset = PRESETS_DIR / f"{path.name.removesuffix('.yaml')}.yaml"
    if path.parent == Path(".") and preset.exists():
        return preset
    known = ", ".join(sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")))
    raise OpdwatchError(f"config file not found: {path} (presets: {known})")


def with_overrides(config: TrainConfig, overrides: list[str]) -> TrainConfig:
    """A copy of `config` with `key=value` overrides applied and validated."""
    config = _build(TrainConfig, _merge(config_to_dict(config), parse_overrides(overrides)), "")
    validate(config)
    return config


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise OpdwatchError(message)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _check_strings(tree: dict[str, Any], where: str = "") -> None:
    """A NUL cannot be in a path (the OS refuses it, Python raises ValueError deep in the run): say which field."""
    for key, value in tree.items():
        if isinstance(value, dict):
            _check_strings(value, f"{where}{key}.")
        elif isinstance(value, str):
            _check("\x00" not in value, f"{where}{key}={value!r}: contains a NUL character")


def _check_run_name(name: str) -> None:
    # run_dir is output_dir / name: anything but one plain component would put the run elsewhere ("..": into
    # the parent of output_dir) or hide it from the readers (a leading dot marks temp and hidden files)
    plain = (bool(name.strip()) and not name.startswith(".") and "/" not in name and "\\" not in name
             and not _CONTROL.search(name))
    _check(plain, f"run.name={name!r}: must be one directory name under run.output_dir (not empty, no / or \\, "
                  "no control characters, not starting with '.')")


def validate(c: TrainConfig) -> None:
    """Reject values that would fail (or silently do nothing) later, before any model is loaded."""
    _check_strings(config_to_dict(c))
    c.watch.validate()  # one-line OpdwatchError on a bad watch.* value
    _check_run_name(c.run.name)
    _check(c.run.threads >= 1, f"run.threads={c.run.threads}: must be >= 1")
    _check(
        c.data.source == "synthetic" or Path(c.data.source).exists(),
        f"data.source={c.data.source!r}: not 'synthetic' and no such file",
    )
    _check(
        c.data.min_ops >= 1 and c.data.max_ops >= c.data.min_ops,
        f"data.min_ops/max_ops={c.data.min_ops}/{c.data.max_ops}: need 1 <= min_ops <= max_ops",
    )
    for name in ("sft_size", "opd_size", "val_size"):
        _check(getattr(c.data, name) >= 1, f"data.{name}={getattr(c.data, name)}: must be >= 1")
    _check(0.0 <= c.data.sft_fraction < 1.0, f"data.sft_fraction={c.data.sft_fraction}: must be in [0, 1)")
    for role in ("student", "teacher"):
        tiny: TinyModelConfig = getattr(c.demo, role)
        _check(
            tiny.hidden >= 1 and tiny.layers >= 1 and tiny.heads >= 1 and tiny.hidden % tiny.heads == 0,
            f"demo.{role}: hidden={tiny.hidden} must be a positive multiple of heads={tiny.heads}",
        )
        _check(tiny.sft_steps >= 0 and tiny.copy_steps >= 0, f"demo.{role}: step counts must be >= 0")
        _check(
            0.0 <= tiny.copy_fraction <= 1.0,
            f"demo.{role}.copy_fraction={tiny.copy_fraction}: must be in [0, 1]",
        )
        _check(
            1 <= tiny.copy_chunk_min <= tiny.copy_chunk_max,
            f"demo.{role}: need 1 <= copy_chunk_min <= copy_chunk_max",
        )
    r = c.rollout
    _check(
        r.prompts_per_step >= 1 and r.samples_per_prompt >= 1,
        "rollout.prompts_per_step and samples_per_prompt must be >= 1",
    )
    _check(
        r.temperature > 0, f"rollout.temperature={r.temperature}: must be > 0 (OPD samples from the student)"
    )
    _check(0.0 < r.top_p <= 1.0, f"rollout.top_p={r.top_p}: must be in (0, 1]")
    _check(r.max_new_tokens >= 1, f"rollout.max_new_tokens={r.max_new_tokens}: must be >= 1")
    o = c.opd
    _check(o.steps >= 0, f"opd.steps={o.steps}: must be >= 0")
    _check(math.isfinite(o.lr) and o.lr > 0, f"opd.lr={o.lr}: must be a positive number")
    _check(o.warmup_steps >= 0, f"opd.warmup_steps={o.warmup_steps}: must be >= 0")
    _check(0.0 < o.clip_eps < 1.0, f"opd.clip_eps={o.clip_eps}: must be in (0, 1)")
    _check(
        1 <= o.minibatches <= r.prompts_per_step,
        f"opd.minibatches={o.minibatches}: must be in [1, rollout.prompts_per_step={r.prompts_per_step}]",
    )
    _check(o.grad_clip > 0, f"opd.grad_clip={o.grad_clip}: must be > 0")
    _check(o.beta >= 0 and o.alpha >= 0, f"opd.beta={o.beta}, opd.alpha={o.alpha}: must be >= 0")
    _check(c.warmup.steps >= 0 and c.warmup.lr > 0, "warmup.steps must be >= 0 and warmup.lr > 0")
    _check(c.val.every >= 0 and c.val.num_prompts >= 1, "val.every must be >= 0 and val.num_prompts >= 1")
    _check(c.val.temperature >= 0, f"val.temperature={c.val.temperature}: must be >= 0 (0 = greedy)")
    _check(c.val.max_new_tokens >= 1, f"val.max_new_tokens={c.val.max_new_tokens}: must be >= 1")
    _check(c.checkpoint.every >= 0 and c.checkpoint.keep >= 1, "checkpoint.every must be >= 0 and keep >= 1")
    from trainer.engines import ENGINES  # registries live beside their functions
    from trainer.variants import ESTIMATORS

    _check(c.objective.estimator in ESTIMATORS,
           f"objective.estimator={c.objective.estimator!r}: one of {', '.join(sorted(ESTIMATORS))}")
    _check(c.objective.topk >= 1, f"objective.topk={c.objective.topk}: must be >= 1")
    _check(o.score_chunk_rows >= 0 and o.micro_rows >= 0, "opd.score_chunk_rows and opd.micro_rows must be >= 0")
    _check(c.engine.kind in ENGINES, f"engine.kind={c.engine.kind!r}: one of {', '.join(sorted(ENGINES))}")
    _check(0 < c.engine.gpu_memory_utilization <= 1, "engine.gpu_memory_utilization must be in (0, 1]")
    rec = c.recorder
    _check(
        rec.tail_window >= 1 and 0 < rec.tail_threshold <= 1 and rec.ngram_n >= 1,
        "recorder: need tail_window >= 1, 0 < tail_threshold <= 1, ngram_n >= 1",
    )
    _check(
        rec.token_every_k_steps >= 1 and 0 < rec.token_rollout_fraction <= 1,
        "recorder: need token_every_k_steps >= 1 and 0 < token_rollout_fraction <= 1",
    )
