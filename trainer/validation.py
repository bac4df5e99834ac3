"""Validation on held-out prompts: sample, decode, check the answer with math-verify.

Truncation and repetition of the validation rollouts are computed by the recorder (phase "val").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from math_verify import parse, verify

from trainer.data import Example, prompt_ids
from trainer.engine import RolloutBatch, RolloutEngine, SamplingParams


@dataclass
class ValResult:
    prompts: list[list[int]]
    batch: RolloutBatch
    texts: list[str]
    correct: list[bool]


def is_correct(answer: str, text: str) -> bool:
    """math-verify: does the response's final answer equal the golden one?"""
    gold = parse(f"${answer}$")
    try:
        return bool(verify(gold, parse(text)))
    except Exception:  # math-verify can raise on odd inputs; a crash is not a correct answer
        return False


def validate(
    engine: RolloutEngine,
    tokenizer,
    examples: list[Example],
    params: SamplingParams,
    generator: torch.Generator | None = None,
) -> ValResult:
    prompts = [prompt_ids(tokenizer, ex.question) for ex in examples]
    saved = getattr(engine, "generator", None)
    if generator is not None:
        engine.generator = generator  # its own stream: validation must not shift the training samples
    try:
        batch = engine.generate(prompts, params)
    finally:
        if generator is not None:
            engine.generator = saved
    texts = tokenizer.batch_decode(batch.token_lists(), skip_special_tokens=True)
    return ValResult(prompts, batch, texts, [is_correct(ex.answer, t) for ex, t in zip(examples, texts, strict=True)])
