"""The demo's tiny teacher and student, trained on first use and cached on disk.

Teacher recipe (why: see docs/trainer.md and shared/notes/cpu-collapse-study.md):
  1. golden SFT on the synthetic task until it solves it;
  2. a "copy prior" fine-tune on golden solutions mixed with repetitive documents, so that - like a pretrained
     LLM - it continues a loop once one has started. Without this prior a tiny teacher punishes loops hard and
     plain OPD does not collapse; with it, the teacher rewards loop tokens and OPD collapses as in the paper.
Student recipe: a short golden SFT of a much smaller model (weak, ~20% accurate, but it stops).

Roles (ROLES): `student`, `teacher` (SFT + copy prior), `teacher_sft` (the teacher's golden-SFT stage alone, the
stage before the copy prior) and `teacher_weak` (the same SFT stage + a quarter of the copy-prior steps: a weaker
prior). The teachers with a copy prior start from the `teacher_sft` directory, so the SFT stage is trained once.

Each model directory is keyed by a hash of everything that shapes it. `ensure_demo_model` looks in the user's
cache, then in the models shipped with the package (`models/`, made by this recipe at the default settings), and
trains only if neither has the key; every directory carries a manifest of its recipe and file checksums that is
verified on load (model_files.py).

The build always runs on BUILD_THREADS torch threads, whatever the run asks for: CPU float sums can depend on the
thread count, and the cache key does not include it. (The demo's own teacher and student came out bit-equal
from 1 and 2 threads on this machine, but the tests' tiny models did not: their pinned losses moved.)
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from opdwatch.atomic import remove_stale_temps
from opdwatch.errors import OpdwatchError
from opdwatch.trainer.data.models import load_causal_lm, save_model_dir
from opdwatch.trainer.data.task import Example, make_splits
from opdwatch.trainer.objectives.sft import golden_sequence, pack_right, repetitive_sequence, sft_train
from opdwatch.trainer.recipes.demo.model_files import copy_model_dir, verify_model_dir, write_manifest
from opdwatch.trainer.recipes.demo.tiny_llama import tiny_llama
from opdwatch.trainer.recipes.demo.tokenizer import DEMO_CHARS, build_char_tokenizer

if TYPE_CHECKING:  # annotations only: the recipes need no runtime edge back to the config module
    from opdwatch.trainer.config import DataConfig, TinyModelConfig, TrainConfig

RECIPE_VERSION = 3  # bump when the recipe code changes, to invalidate caches (3: manifests, roles, shipped files)
BUILD_THREADS = 2  # torch threads of every build (2: what the demo runs on by default)
MAX_LEN = 256  # position budget of the tiny models (prompt <= 20 chars + 128 new tokens)
COPY_DOC_LENGTH = 128  # repetitive documents fill the whole generation budget, without EOS
SHIPPED_DIR = Path(__file__).parent / "models"  # models made by this recipe at the default settings (package data)


@dataclass(frozen=True)
class Role:
    source: str  # field of config.demo (student | teacher) whose architecture and recipe the role starts from
    copy_steps: Callable[[int], int] | None = None  # copy-prior steps from the source's; None keeps them
    base: str | None = None  # role whose directory the copy-prior stage starts from (its SFT stage, trained once)


# The demo's models by role name; `models.student/teacher: demo` use the roles "student" / "teacher"
ROLES: dict[str, Role] = {
    "student": Role("student"),
    "teacher_sft": Role("teacher", copy_steps=lambda n: 0),  # golden SFT only: punishes loops
    "teacher_weak": Role("teacher", copy_steps=lambda n: n // 4, base="teacher_sft"),  # a quarter of the prior
    "teacher": Role("teacher", base="teacher_sft"),  # SFT + the full copy prior: rewards loop continuations
}
DEMO_ROLES = ("student", "teacher")  # what `opdwatch demo` runs with


def cache_root(config: TrainConfig) -> Path:
    if config.models.cache_dir:
        return Path(config.models.cache_dir)
    if os.environ.get("OPDWATCH_CACHE"):
        return Path(os.environ["OPDWATCH_CACHE"])
    return Path.home() / ".cache" / "opdwatch" / "demo"


def recipe_of(family: str, tiny: TinyModelConfig, data: DataConfig) -> dict:
    """Everything that shapes a model of `family` (student | teacher); its key is a hash of this and its manifest
    records it. The role name is not part of it: `teacher` with `demo.teacher.copy_steps=0` is `teacher_sft`."""
    return {"role": family, "model": asdict(tiny), "data": asdict(data), "chars": DEMO_CHARS,
            "version": RECIPE_VERSION}


def recipe_key(family: str, tiny: TinyModelConfig, data: DataConfig) -> str:
    return hashlib.sha256(json.dumps(recipe_of(family, tiny, data), sort_keys=True).encode()).hexdigest()[:12]


def role_recipe(config: TrainConfig, role: str) -> TinyModelConfig:
    """The architecture and recipe of `role` under `config.demo`."""
    spec = ROLES.get(role)
    if spec is None:
        raise OpdwatchError(f"demo model role {role!r}: one of {', '.join(ROLES)}")
    tiny: TinyModelConfig = getattr(config.demo, spec.source)
    return tiny if spec.copy_steps is None else replace(tiny, copy_steps=spec.copy_steps(tiny.copy_steps))


def model_dir_name(config: TrainConfig, role: str) -> str:
    tiny = role_recipe(config, role)  # an unknown role fails here
    family = ROLES[role].source
    return f"{family}-{recipe_key(family, tiny, config.data)}"


def _golden_batches(tokenizer, examples: list[Example], batch_size: int, seed: int):
    rng = random.Random(seed)

    def make(step: int) -> tuple[torch.Tensor, ...]:
        seqs = [golden_sequence(tokenizer, ex) for ex in rng.sample(examples, batch_size)]
        return pack_right([s for s, _ in seqs], [m for _, m in seqs], tokenizer.pad_token_id)

    return make


def _copy_prior_batches(tokenizer, examples: list[Example], tiny: TinyModelConfig, seed: int):
    rng = random.Random(seed + 1)

    def make(step: int) -> tuple[torch.Tensor, ...]:
        seqs = []
        for ex in rng.sample(examples, tiny.batch_size):
            if rng.random() < tiny.copy_fraction:
                seqs.append(
                    repetitive_sequence(
                        tokenizer, ex, rng, COPY_DOC_LENGTH, (tiny.copy_chunk_min, tiny.copy_chunk_max)
                    )
                )
            else:
                seqs.append(golden_sequence(tokenizer, ex))
        return pack_right([s for s, _ in seqs], [m for _, m in seqs], tokenizer.pad_token_id)

    return make


def _train_stage(model, make_batch, steps: int, lr: float, desc: str, progress: bool) -> None:
    if steps == 0:
        return
    with tqdm(total=steps, desc=desc, disable=not progress, leave=False) as bar:

        def on_step(step: int, loss: float) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

        sft_train(model, make_batch, steps=steps, lr=lr, on_step=on_step)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block on `n` intra-op torch threads, then restore the caller's setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)



def _fresh_model(tokenizer, tiny: TinyModelConfig):
    return tiny_llama(
        vocab_size=len(tokenizer),
        hidden=tiny.hidden,
        layers=tiny.layers,
        heads=tiny.heads,
        intermediate=tiny.intermediate,
        max_len=MAX_LEN,
        pad_id=tokenizer.pad_token_id,
        eos_id=tokenizer.eos_token_id,
        seed=tiny.init_seed,
    )


def _copy_prior_stage(model, tokenizer, splits, role: str, tiny: TinyModelConfig, progress: bool) -> None:
    _train_stage(
        model,
        _copy_prior_batches(tokenizer, splits.sft, tiny, tiny.init_seed),
        tiny.copy_steps,
        tiny.copy_lr,
        f"demo {role}: copy-prior fine-tune",
        progress,
    )


def build_demo_model(
    role: str, tiny: TinyModelConfig, data: DataConfig, out_dir: Path, progress: bool
) -> None:
    """Train one demo model from scratch (golden SFT, then the copy prior if `tiny.copy_steps`) and save it
    (weights + tokenizer) to `out_dir`."""
    tokenizer = build_char_tokenizer()
    splits = make_splits(data)  # same splits as the runs, so validation prompts stay unseen
    model = _fresh_model(tokenizer, tiny)
    _train_stage(
        model,
        _golden_batches(tokenizer, splits.sft, tiny.batch_size, tiny.init_seed),
        tiny.sft_steps,
        tiny.sft_lr,
        f"demo {role}: golden SFT",
        progress,
    )
    _copy_prior_stage(model, tokenizer, splits, role, tiny, progress)
    save_model_dir(model, tokenizer, out_dir)


def finetune_demo_model(
    role: str, tiny: TinyModelConfig, data: DataConfig, base_dir: Path, out_dir: Path, progress: bool
) -> None:
    """The copy-prior stage of `tiny` on the saved SFT stage in `base_dir` (the same weights as training both
    stages in one go: the stages share no optimizer state and draw their batches from their own seeds)."""
    tokenizer = build_char_tokenizer()
    model = load_causal_lm(str(base_dir), trainable=True)
    _copy_prior_stage(model, tokenizer, make_splits(data), role, tiny, progress)
    save_model_dir(model, tokenizer, out_dir)


def _with_bases(roles: tuple[str, ...]) -> list[str]:
    """`roles` with the roles they start from, each base before its users, no repeats."""
    out: list[str] = []

    def add(role: str) -> None:
        base = ROLES[role].base
        if base:
            add(base)
        if role not in out:
            out.append(role)

    for role in roles:
        add(role)
    return out


def ensure_demo_model(config: TrainConfig, role: str, *, shipped: bool = True) -> Path:
    """Path of the demo `role` model (a key of ROLES): from the user's cache, else from the shipped models (unless
    `shipped=False`), else trained now into the cache. Found directories are verified against their manifest."""
    tiny = role_recipe(config, role)
    family = ROLES[role].source
    name = model_dir_name(config, role)
    key = recipe_key(family, tiny, config.data)
    root = cache_root(config)
    final = root / name
    for found in (final, SHIPPED_DIR / name) if shipped else (final,):
        if found.is_dir():
            verify_model_dir(found, key=key, recipe_version=RECIPE_VERSION)  # never a damaged model, silently
            return found
    base = ROLES[role].base if tiny.copy_steps else None  # no copy prior: the role is its SFT stage itself
    base_dir = ensure_demo_model(config, base, shipped=shipped) if base else None
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(root)  # builds of killed processes (their pid is in the name; live ones are kept)
    # hidden, renamed into place when complete
    tmp = Path(tempfile.mkdtemp(prefix=f".{role}.tmp-{os.getpid()}-", dir=root))
    try:
        with torch_threads(BUILD_THREADS):
            if base_dir is None:
                build_demo_model(role, tiny, config.data, tmp, config.run.progress)
            else:
                finetune_demo_model(role, tiny, config.data, base_dir, tmp, config.run.progress)
        write_manifest(tmp, role=family, key=key, recipe_version=RECIPE_VERSION,
                       recipe=recipe_of(family, tiny, config.data))
        if final.is_dir():  # another process won the race
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def rebuild_demo_models(config: TrainConfig, roles: tuple[str, ...] = DEMO_ROLES) -> dict[str, Path]:
    """Train `roles` (and the roles they start from) from scratch into the cache, replacing what is there; the
    shipped models are not read. Later runs with the same settings use these (the cache comes first)."""
    for role in roles:
        role_recipe(config, role)  # an unknown role fails before anything is deleted
    ordered = _with_bases(roles)
    for role in ordered:
        shutil.rmtree(cache_root(config) / model_dir_name(config, role), ignore_errors=True)
    return {role: ensure_demo_model(config, role, shipped=False) for role in ordered}


def ship_demo_model(config: TrainConfig, role: str, src: Path, dest_root: Path = SHIPPED_DIR) -> Path:
    """Copy a model built by this recipe for (`config`, `role`) into the shipped models (maintainers: after
    `rebuild_demo_models` at the default settings), with a fresh manifest. Returns the new directory."""
    tiny = role_recipe(config, role)
    family = ROLES[role].source
    dest = dest_root / model_dir_name(config, role)
    copy_model_dir(src, dest, role=family, key=recipe_key(family, tiny, config.data), recipe_version=RECIPE_VERSION,
                   recipe=recipe_of(family, tiny, config.data))
    return dest
