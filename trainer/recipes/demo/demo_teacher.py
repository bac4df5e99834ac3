"""The demo's tiny teacher and student, trained on first use and cached on disk.

Teacher recipe (why: see docs/trainer.md and shared/notes/cpu-collapse-study.md):
  1. golden SFT on the synthetic task until it solves it;
  2. a "copy prior" fine-tune on golden solutions mixed with repetitive documents, so that - like a pretrained
     LLM - it continues a loop once one has started. Without this prior a tiny teacher punishes loops hard and
     plain OPD does not collapse; with it, the teacher rewards loop tokens and OPD collapses as in the paper.
Student recipe: a short golden SFT of a much smaller model (weak, ~20% accurate, but it stops).

Each model directory is keyed by a hash of everything that shapes it, so later runs load it at once. The build
always runs on BUILD_THREADS torch threads, whatever the run asks for: CPU float sums can depend on the
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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from opdwatch.atomic import remove_stale_temps
from opdwatch.trainer.data.models import save_model_dir
from opdwatch.trainer.data.task import Example, make_splits
from opdwatch.trainer.objectives.sft import golden_sequence, pack_right, repetitive_sequence, sft_train
from opdwatch.trainer.recipes.demo.tiny_llama import tiny_llama
from opdwatch.trainer.recipes.demo.tokenizer import DEMO_CHARS, build_char_tokenizer

if TYPE_CHECKING:  # annotations only: the recipes need no runtime edge back to the config module
    from opdwatch.trainer.config import DataConfig, TinyModelConfig, TrainConfig

RECIPE_VERSION = 2  # bump when the recipe code changes, to invalidate caches
BUILD_THREADS = 2  # torch threads of every build (2: what the demo runs on by default)
MAX_LEN = 256  # position budget of the tiny models (prompt <= 20 chars + 128 new tokens)
COPY_DOC_LENGTH = 128  # repetitive documents fill the whole generation budget, without EOS


def cache_root(config: TrainConfig) -> Path:
    if config.models.cache_dir:
        return Path(config.models.cache_dir)
    if os.environ.get("OPDWATCH_CACHE"):
        return Path(os.environ["OPDWATCH_CACHE"])
    return Path.home() / ".cache" / "opdwatch" / "demo"


def recipe_key(role: str, tiny: TinyModelConfig, data: DataConfig) -> str:
    recipe = {
        "role": role,
        "model": asdict(tiny),
        "data": asdict(data),
        "chars": DEMO_CHARS,
        "version": RECIPE_VERSION,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


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


def build_demo_model(
    role: str, tiny: TinyModelConfig, data: DataConfig, out_dir: Path, progress: bool
) -> None:
    """Train one demo model from scratch and save it (weights + tokenizer) to `out_dir`."""
    tokenizer = build_char_tokenizer()
    splits = make_splits(data)  # same splits as the runs, so validation prompts stay unseen
    model = tiny_llama(
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
    _train_stage(
        model,
        _golden_batches(tokenizer, splits.sft, tiny.batch_size, tiny.init_seed),
        tiny.sft_steps,
        tiny.sft_lr,
        f"demo {role}: golden SFT",
        progress,
    )
    _train_stage(
        model,
        _copy_prior_batches(tokenizer, splits.sft, tiny, tiny.init_seed),
        tiny.copy_steps,
        tiny.copy_lr,
        f"demo {role}: copy-prior fine-tune",
        progress,
    )
    save_model_dir(model, tokenizer, out_dir)


def ensure_demo_model(config: TrainConfig, role: str) -> Path:
    """Path of the cached demo `role` ("student" or "teacher") model, training it first if it is missing."""
    tiny: TinyModelConfig = getattr(config.demo, role)
    root = cache_root(config)
    final = root / f"{role}-{recipe_key(role, tiny, config.data)}"
    if (final / "config.json").exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(root)  # builds of killed processes (their pid is in the name; live ones are kept)
    # hidden, renamed into place when complete
    tmp = Path(tempfile.mkdtemp(prefix=f".{role}.tmp-{os.getpid()}-", dir=root))
    try:
        with torch_threads(BUILD_THREADS):
            build_demo_model(role, tiny, config.data, tmp, config.run.progress)
        if (final / "config.json").exists():  # another process won the race
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
