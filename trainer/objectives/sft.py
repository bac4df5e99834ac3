"""Supervised fine-tuning on golden solutions (and, for the demo teacher, on "repetitive documents").

Used by the demo model recipes (`recipes.demo.demo_teacher`) and by the loop's optional SFT warm-up.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

import torch
from transformers import PreTrainedModel

from opdwatch.trainer.data.task import Example, prompt_ids, solution_ids

IGNORE = -100  # label value that the causal-LM loss skips


def pack_right(
    seqs: Sequence[list[int]], label_masks: Sequence[list[bool]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad sequences; returns ids_BS, attention mask_BS, labels_BS (IGNORE where not trained on)."""
    width = max(len(s) for s in seqs)
    ids_BS = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask_BS = torch.zeros_like(ids_BS)
    labels_BS = torch.full_like(ids_BS, IGNORE)
    for i, (s, m) in enumerate(zip(seqs, label_masks, strict=True)):
        row = torch.tensor(s, dtype=torch.long)
        ids_BS[i, : len(s)] = row
        mask_BS[i, : len(s)] = 1
        labels_BS[i, : len(s)] = torch.where(torch.tensor(m), row, torch.full_like(row, IGNORE))
    return ids_BS, mask_BS, labels_BS


def golden_sequence(tokenizer, ex: Example) -> tuple[list[int], list[bool]]:
    """prompt + solution + EOS, trained on the solution and EOS only."""
    p, s = prompt_ids(tokenizer, ex.question), solution_ids(tokenizer, ex.solution)
    return p + s, [False] * len(p) + [True] * len(s)


def repetitive_sequence(
    tokenizer, ex: Example, rng: random.Random, length: int, chunk_range: tuple[int, int]
) -> tuple[list[int], list[bool]]:
    """A "repetitive document" for the teacher's copy prior.

    prompt + the solution cut at a random point + a random 3-14 character chunk of the solution repeated until the
    response is `length` characters, no EOS. Only the second copy onward is trained on: the first copy is where the
    text leaves the solution (starting a loop), which we do not teach; later copies continue a loop that has already
    begun, which we do (as pretrained LLMs do).
    """
    p = prompt_ids(tokenizer, ex.question)
    sol = ex.solution
    size = min(rng.randint(*chunk_range), len(sol))
    start = rng.randint(0, len(sol) - size)
    chunk = sol[start : start + size]
    prefix = sol[: rng.randint(0, len(sol) - 1)]
    text = (prefix + chunk * math.ceil(length / size))[:length]
    r = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    first_loss = len(prefix) + size  # the second copy
    return p + r, [False] * len(p) + [i >= first_loss for i in range(len(r))]


def causal_lm_loss(
    model: PreTrainedModel, ids_BS: torch.Tensor, mask_BS: torch.Tensor, labels_BS: torch.Tensor
) -> torch.Tensor:
    """Token-mean NLL over the labelled tokens."""
    logits_BSV = model(input_ids=ids_BS, attention_mask=mask_BS).logits
    return torch.nn.functional.cross_entropy(
        logits_BSV[:, :-1].flatten(0, 1).float(), labels_BS[:, 1:].flatten(), ignore_index=IGNORE
    )


def sft_train(
    model: PreTrainedModel,
    make_batch: Callable[[int], tuple[torch.Tensor, ...]],
    *,
    steps: int,
    lr: float,
    warmup: int = 50,
    on_step: Callable[[int, float], None] | None = None,
) -> float:
    """AdamW with linear warm-up and cosine decay; returns the last loss."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / max(steps, 1))),
    )
    model.train()
    loss = torch.tensor(float("nan"))
    for step in range(steps):
        loss = causal_lm_loss(model, *make_batch(step))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if on_step is not None:
            on_step(step, float(loss.detach()))
    model.eval()
    return float(loss.detach())
