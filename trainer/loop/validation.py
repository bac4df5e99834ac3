"""Validation on held-out prompts: sample, decode, check the answer with math-verify, record as phase "val".

Truncation and repetition of the validation rollouts are computed by the recorder. Only rank 0 validates.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from math_verify import parse, verify

from opdwatch.recorder import Recorder
from opdwatch.trainer.config import TrainConfig
from opdwatch.trainer.data.task import Example, prompt_ids
from opdwatch.trainer.loop.components import Components
from opdwatch.trainer.rollout.engine import RolloutBatch, RolloutEngine, SamplingParams


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


def run_validation(
    config: TrainConfig, components: Components, engine: RolloutEngine, rec: Recorder, step: int
) -> dict[str, float]:
    """Sample the held-out prompts (own RNG stream per step), check answers, record as phase "val"."""
    t0 = time.perf_counter()
    examples = components.splits.val[: config.val.num_prompts]
    generator = torch.Generator().manual_seed(config.run.seed * 1_000_003 + step)
    res = validate(
        engine,
        components.tokenizer,
        examples,
        SamplingParams(config.val.temperature, 1.0, config.val.max_new_tokens),
        generator,
    )
    summary = rec.record_step(
        step,
        phase="val",
        token_ids=res.batch.tokens_BT,
        lengths=res.batch.lengths_B,
        finish_reasons=res.batch.finish_reasons,
        texts=res.texts,
        source="val",
        correct=res.correct,
        prompt_ids=[f"val-{i}" for i in range(len(examples))],
        prompt_texts=[ex.question for ex in examples],
        metrics={"time/val": time.perf_counter() - t0},
        write_metrics=True,  # only rank 0 validates, so its metrics are the global ones
    )
    out = {f"val/{key.split('/', 1)[1]}": value for key, value in summary.items() if key.startswith("rollout/")}
    if config.val.greedy_too and config.val.temperature > 0:
        greedy = validate(engine, components.tokenizer, examples, SamplingParams(0.0, 1.0, config.val.max_new_tokens))
        extra = {"greedy/accuracy": sum(greedy.correct) / max(len(greedy.correct), 1),
                 "greedy/truncation_rate": sum(r == "length" for r in greedy.batch.finish_reasons)
                 / max(len(greedy.correct), 1)}
        rec.log_metrics(step, "val", extra)  # read back as val/greedy/... in the step series
        out.update({f"val/{key}": value for key, value in extra.items()})
    return out
