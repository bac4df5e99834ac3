"""Tiny, fully local TRL setups for tests: real TRL trainers, real transformers models, no model hub.

    from tests.trl_tiny import make_trainer
    trainer = make_trainer("gkd", tmp_path / "out", max_steps=3)            # "distillation" | "gkd" | "gold"
    trainer.train()

    trainer = make_trainer("distillation", tmp_path / "out", log_completions=True, save_steps=1)
    trainer.train()   # writes out/checkpoint-*/trainer_state.json and out/completions/completions_*.parquet

What it builds (every piece is cached per process and copied per trainer, so a test pays for it once):

- ``build_tokenizer()``: a ByteLevel BPE tokenizer trained with ``tokenizers`` on the task's own text, with the
  Qwen-style specials ``<|endoftext|>`` (pad), ``<|im_start|>``, ``<|im_end|>`` (EOS) and a ChatML chat template.
  GOLD insists on a ByteLevel BPE tokenizer even with its cross-tokenizer loss off.
- ``build_models()``: a Qwen2 student and teacher (hidden 32, 2 layers, different seeds), given 15 and 40
  full-batch SFT steps on the task (about 3 s) so that they emit ``<|im_end|>`` sometimes: with the default
  12-token budget some rollouts stop on EOS and some are truncated, which is what the truncation tests need.
  ``generation_config`` eos/pad are set on both models (TRL reads them from there).
- ``prompt_dataset(kind)``: a ``datasets.Dataset`` in the layout each trainer expects: ``prompt`` (a
  conversation without the answer) for DistillationTrainer, ``messages`` (with the golden answer, which GKD and
  GOLD use for their off-policy batches) for GKD and GOLD.
- ``make_trainer(kind, output_dir, **overrides)``: the trainer on CPU (``use_cpu=True``, ``report_to="none"``,
  ``HF_HUB_OFFLINE=1``), 3 steps by default, fully on-policy (``lmbda=1.0`` for GKD/GOLD), no checkpoints.
  ``log_completions=True`` and ``save_steps=N`` turn on TRL's own completion Parquet (DistillationTrainer writes
  it; GKD has no such option and GOLD logs completions to wandb only) and checkpoints with
  ``trainer_state.json``. Any other keyword goes to the trainer's config class.
- ``torch_threads(1)``: a context manager for the tests' torch thread count (restored after). On a shared
  2-core machine one thread runs these tiny models 5-15x faster than two contended ones; with it a trainer's
  3 steps take about 1 s.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MAX_COMPLETION = 12  # tokens; short enough that the tiny student is truncated in some rollouts
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
PAD, EOS = "<|endoftext|>", "<|im_end|>"
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Full-batch SFT steps: after 15 the student ends ~30-60% of 12-token rollouts with <|im_end|> (measured with
# model.generate on 32 prompts), so a batch has both EOS-terminated and truncated rollouts; the teacher gets more.
STUDENT_SFT_STEPS, TEACHER_SFT_STEPS = 15, 40


def _problems(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """(question, golden answer) pairs; answers of varied length, some longer than MAX_COMPLETION tokens."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(1, 30), rng.randint(1, 30)
        reps = rng.choice([0, 0, 1, 3])
        work = " ".join([f"{a}+{b}={a + b}."] * reps)
        out.append((f"Q:{a}+{b}=?", f"{work} \\boxed{{{a + b}}}".strip()))
    return out


@functools.cache
def _tokenizer_template() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=list(SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    corpus = [f"user\n{q}\nassistant\n{a}" for q, a in _problems(400, seed=1)]
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS,
                                   additional_special_tokens=["<|im_start|>"], padding_side="left")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tokenizer() -> Any:
    """A fresh copy of the tiny ByteLevel BPE tokenizer (trainers mutate tokenizer settings)."""
    return copy.deepcopy(_tokenizer_template())


def _qwen2(vocab: int, seed: int) -> Any:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    tok = _tokenizer_template()
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                      bos_token_id=None)
    model = Qwen2ForCausalLM(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.bos_token_id = None
    return model


def _sft(model: Any, steps: int, seed: int) -> None:
    """A few full-batch AdamW steps on the chat-formatted task, loss on the answer and its <|im_end|>."""
    import torch

    tok = _tokenizer_template()
    rows = []
    for q, a in _problems(48, seed=seed):
        prompt = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        a_ids = tok(a + EOS, add_special_tokens=False)["input_ids"]
        rows.append((p_ids + a_ids, len(p_ids)))
    width = max(len(ids) for ids, _ in rows)
    ids_BT = torch.full((len(rows), width), tok.pad_token_id)
    labels_BT = torch.full((len(rows), width), -100)
    mask_BT = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, n_prompt) in enumerate(rows):  # right padding for SFT
        ids_BT[i, :len(ids)] = torch.tensor(ids)
        labels_BT[i, n_prompt:len(ids)] = torch.tensor(ids[n_prompt:])
        mask_BT[i, :len(ids)] = 1
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids_BT, attention_mask=mask_BT, labels=labels_BT).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


@contextlib.contextmanager
def torch_threads(n: int = 1) -> Iterator[None]:
    """Run with ``n`` torch threads, then restore. On a shared 2-core machine one thread is 5-15x faster for
    these tiny matmuls than two contended ones."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@functools.cache
def _model_templates() -> tuple[Any, Any]:
    import torch

    vocab = len(_tokenizer_template())
    with torch.random.fork_rng(), torch_threads(1):
        student, teacher = _qwen2(vocab, seed=11), _qwen2(vocab, seed=23)
        _sft(student, STUDENT_SFT_STEPS, seed=2)   # a weaker student than its teacher
        _sft(teacher, TEACHER_SFT_STEPS, seed=3)
    return student, teacher


def build_models() -> tuple[Any, Any]:
    """Fresh copies of the (student, teacher) pair: each trainer trains its own student."""
    student, teacher = _model_templates()
    return copy.deepcopy(student), copy.deepcopy(teacher)


def prompt_dataset(kind: str, n: int = 16, seed: int = 5) -> Any:
    """The training data for ``kind``: ``prompt`` conversations (distillation) or ``messages`` with answers."""
    from datasets import Dataset

    problems = _problems(n, seed=seed)
    if kind == "distillation":
        return Dataset.from_list([{"prompt": [{"role": "user", "content": q}]} for q, _ in problems])
    return Dataset.from_list([{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
                              for q, a in problems])


def _distillation(args: dict[str, Any]) -> tuple[Any, Any]:
    from trl import DistillationConfig, DistillationTrainer

    return DistillationConfig, DistillationTrainer


def _gkd(args: dict[str, Any]) -> tuple[Any, Any]:
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    args.setdefault("lmbda", 1.0)
    args["max_new_tokens"] = args.pop("max_completion_length")
    args.pop("log_completions", None)  # GKD has no completion log
    return GKDConfig, GKDTrainer


def _gold(args: dict[str, Any]) -> tuple[Any, Any]:
    from trl.experimental.gold import GOLDConfig, GOLDTrainer

    args.setdefault("lmbda", 1.0)
    args.setdefault("use_uld_loss", False)
    return GOLDConfig, GOLDTrainer


# kind -> fills kind-specific config fields and returns (config class, trainer class)
_KINDS = {"distillation": _distillation, "gkd": _gkd, "gold": _gold}
KINDS = tuple(_KINDS)


def make_trainer(kind: str, output_dir: str | os.PathLike[str], *, max_steps: int = 3, batch_size: int = 4,
                 log_completions: bool = False, save_steps: int | None = None, seed: int = 0,
                 callbacks: list[Any] | None = None, **overrides: Any) -> Any:
    """A real TRL trainer of ``kind`` on the tiny pair, ready to ``train()`` on CPU.

    ``log_completions`` turns on TRL's completion log; ``save_steps=N`` saves a checkpoint (with
    ``trainer_state.json``) every N steps. ``overrides`` go to the config class (e.g. ``lmbda=0.5``,
    ``report_to=["wandb"]``, ``max_completion_length=8``).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "offline")
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    args: dict[str, Any] = dict(
        output_dir=str(Path(output_dir)), max_steps=max_steps, per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=1, learning_rate=1e-3, logging_steps=1, use_cpu=True, report_to="none",
        seed=seed, data_seed=seed, save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500,
        max_completion_length=MAX_COMPLETION, log_completions=log_completions, disable_tqdm=True,
        dataloader_num_workers=0, bf16=False, fp16=False,
    )
    args.update(overrides)
    config_cls, trainer_cls = _KINDS[kind](args)
    student, teacher = build_models()
    return trainer_cls(model=student, teacher_model=teacher, args=config_cls(**args),
                       train_dataset=prompt_dataset(kind), processing_class=build_tokenizer(),
                       callbacks=callbacks)
