"""Prompts and golden solutions: the embedded synthetic math task, or JSONL/Parquet files.

A record is (question, solution, answer). Files may use either `question/solution/answer` or the OpenR1-Math
layout `problem/solution/answer`. The synthetic task follows the CPU collapse study: `Q:14+3-5=?` with 1-4 operations
(first number 0-20, others 0-9, no negative intermediate), golden `14+3=17. 17-5=12. \\boxed{12}`.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from opdwatch.errors import OpdwatchError
from opdwatch.trainer.config import DataConfig


@dataclass(frozen=True)
class Example:
    question: str  # the user prompt text (before any chat template)
    solution: str  # golden solution text, ending with the final answer
    answer: str  # the final answer, for math-verify


@dataclass(frozen=True)
class Splits:
    sft: list[Example]  # golden SFT warm-up data
    opd: list[Example]  # prompts for on-policy distillation (solutions used by the SFT mixture term)
    val: list[Example]  # held-out validation prompts


def synthetic_example(rng: random.Random, min_ops: int, max_ops: int) -> Example:
    n_ops = rng.randint(min_ops, max_ops)
    value = rng.randint(0, 20)
    question, steps = f"{value}", []
    for _ in range(n_ops):
        operand = rng.randint(0, 9)
        op = "-" if operand <= value and rng.random() < 0.5 else "+"  # never go negative
        new = value + operand if op == "+" else value - operand
        question += f"{op}{operand}"
        steps.append(f"{value}{op}{operand}={new}.")
        value = new
    solution = " ".join(steps) + f" \\boxed{{{value}}}"
    return Example(question=f"Q:{question}=?", solution=solution, answer=str(value))


def synthetic_splits(seed: int, sizes: tuple[int, int, int], min_ops: int = 1, max_ops: int = 4) -> Splits:
    """Deterministic from `seed`; validation questions never appear in the training splits."""
    rng = random.Random(seed)
    n_sft, n_opd, n_val = sizes
    val, seen = [], set()
    while len(val) < n_val:
        ex = synthetic_example(rng, min_ops, max_ops)
        if ex.question not in seen:
            seen.add(ex.question)
            val.append(ex)
    train = []
    while len(train) < n_sft + n_opd:
        ex = synthetic_example(rng, min_ops, max_ops)
        if ex.question not in seen:
            train.append(ex)
    return Splits(sft=train[:n_sft], opd=train[n_sft:], val=val)


def load_examples(path: str | Path) -> list[Example]:
    """Read a JSONL or Parquet file of question|problem, solution, answer records."""
    path = Path(path)
    if not path.exists():
        raise OpdwatchError(f"data file not found: {path}")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    else:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    out = []
    for i, row in enumerate(rows):
        question = row.get("question", row.get("problem"))
        if question is None or "solution" not in row or "answer" not in row:
            raise OpdwatchError(f"{path}: record {i} needs question|problem, solution and answer")
        out.append(Example(question=str(question), solution=str(row["solution"]), answer=str(row["answer"])))
    return out


def file_splits(path: str, val_path: str | None, val_size: int, sft_fraction: float, seed: int) -> Splits:
    """Split a file into the SFT / OPD / validation sets (validation from `val_path` when given)."""
    examples = load_examples(path)
    random.Random(seed).shuffle(examples)
    val = load_examples(val_path) if val_path else examples[:val_size]
    rest = examples if val_path else examples[val_size:]
    n_sft = int(len(rest) * sft_fraction)
    return Splits(sft=rest[:n_sft], opd=rest[n_sft:], val=val)


def prompt_ids(tokenizer, question: str) -> list[int]:
    """Token ids of the prompt, through the chat template when the tokenizer has one."""
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True
        )
        return list(ids["input_ids"] if isinstance(ids, dict) else ids)
    return list(tokenizer(question, add_special_tokens=False)["input_ids"])


def solution_ids(tokenizer, solution: str) -> list[int]:
    """Token ids of a golden solution followed by EOS (the student must learn to stop)."""
    return list(tokenizer(solution, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]


def make_splits(data: DataConfig) -> Splits:
    """The run's SFT / OPD / validation splits as configured."""
    if data.source == "synthetic":
        return synthetic_splits(
            data.seed, (data.sft_size, data.opd_size, data.val_size), data.min_ops, data.max_ops
        )
    return file_splits(data.source, data.val_path or None, data.val_size, data.sft_fraction, data.seed)
