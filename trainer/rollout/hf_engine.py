"""Rollouts from a transformers causal LM: a plain sampling loop over `model.forward` with its KV cache.

On tiny CPU models transformers' per-step overhead dominates: a loop over the HF forward is only ~1.1x
`model.generate`, so Llama/Qwen2 models are decoded by rollout.fast_decode (the same math on the model's own
parameters with a preallocated KV cache); other models use the HF forward, passing the cache as `cache=` (the
argument of transformers >= 5.24). benchmarks/rollout_throughput.py compares all three.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from transformers import DynamicCache, PreTrainedModel

from opdwatch.errors import OpdwatchError
from opdwatch.trainer.rollout import sampling
from opdwatch.trainer.rollout.engine import FinishReason, RolloutBatch, RowIndex, SamplingParams
from opdwatch.trainer.rollout.fast_decode import FastDecoder, unsupported_reason


def left_pad(prompt_ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad prompts so every row's last prompt token sits in the same column.

    Returns ids_BP (B, P) int64 and mask_BP (B, P) int64 (1 for real tokens).
    """
    width = max(len(p) for p in prompt_ids)
    ids_BP = torch.full((len(prompt_ids), width), pad_id, dtype=torch.long)
    mask_BP = torch.zeros((len(prompt_ids), width), dtype=torch.long)
    for i, p in enumerate(prompt_ids):
        ids_BP[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask_BP[i, width - len(p) :] = 1
    return ids_BP, mask_BP


def sample_next(
    logits_BV: torch.Tensor, params: SamplingParams, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row; returns (token_B, logp_B), logp under the distribution sampled from."""
    return sampling.sample_next(logits_BV, temperature=params.temperature, top_p=params.top_p, generator=generator)


class HFEngine:
    """`RolloutEngine` on a transformers model; `generator` makes sampling reproducible (and checkpointable)."""

    def __init__(
        self, model: PreTrainedModel, *, eos_id: int, pad_id: int, generator: torch.Generator | None = None,
        stop_ids: Sequence[int] = (), counter_rng: bool = False, fast: bool = True,
    ):
        self.model = model
        # fast: decode with rollout.fast_decode (same math, preallocated KV cache, no transformers per-step
        # machinery; ~2x tokens/s on the demo models) when the architecture supports it, else the HF forward
        self.fast = fast
        self.decoder: FastDecoder | None = None  # built on first use, keeps its RoPE tables
        self.eos_id = eos_id
        self.pad_id = pad_id
        self.generator = generator
        # every id that ends a rollout: the EOS plus the other canonical stop ids (data.eos_canon)
        self.stop_ids = torch.tensor(sorted({eos_id, *stop_ids}), dtype=torch.long)
        # counter_rng: row i of a call draws from uniforms indexed by (call, position, global row number), so a
        # rollout does not depend on which rank samples it (the row numbers are generate's `rows` argument)
        self.counter_rng = counter_rng

    def _sampler(self, B: int, params: SamplingParams, rows: RowIndex | None):
        """The per-position sampling function of one generate call."""
        if not self.counter_rng:
            return lambda logits_BV, t: sample_next(logits_BV, params, self.generator)
        rows = rows or RowIndex(tuple(range(B)), B)
        if len(rows.numbers) != B:
            raise ValueError(f"rows: {len(rows.numbers)} row numbers for {B} prompts")
        index_B, total = torch.tensor(rows.numbers, dtype=torch.long), rows.total
        base = int(torch.randint(0, 2**62, (1,), generator=self.generator))

        def sample(logits_BV: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
            g = torch.Generator().manual_seed(base + t)
            u_B = torch.rand(total, generator=g, dtype=torch.float64)[index_B]
            return sampling.sample_from_uniform(logits_BV, u_B, temperature=params.temperature, top_p=params.top_p)

        return sample

    def _start(
        self, ids_BP: torch.Tensor, mask_BP: torch.Tensor, max_new_tokens: int
    ) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        """Prefill: (logits (B, V) at the last prompt column, `feed`: token_B -> the next logits (B, V))."""
        if self.fast and unsupported_reason(self.model) is None:  # checked per call: e.g. train mode + dropout
            self.decoder = self.decoder or FastDecoder(self.model)
            return self.decoder.start(ids_BP, mask_BP, max_new_tokens), self.decoder.step
        B = ids_BP.shape[0]
        pos_BP = (mask_BP.cumsum(dim=1) - 1).clamp(min=0)  # positions count real tokens only
        # `cache=` (and the output's `.cache`): the names of transformers >= 5.24, where `past_key_values` is
        # deprecated (removed in 5.40); pyproject's train extra pins the range
        out = self.model(
            input_ids=ids_BP, attention_mask=mask_BP, position_ids=pos_BP, cache=DynamicCache(), use_cache=True
        )
        state = {"mask_BS": mask_BP, "pos_B": pos_BP[:, -1] + 1, "cache": out.cache}

        def feed(token_B: torch.Tensor) -> torch.Tensor:
            state["mask_BS"] = torch.cat([state["mask_BS"], torch.ones((B, 1), dtype=torch.long)], dim=1)
            out = self.model(
                input_ids=token_B[:, None], attention_mask=state["mask_BS"], position_ids=state["pos_B"][:, None],
                cache=state["cache"], use_cache=True,
            )
            state["pos_B"] = state["pos_B"] + 1
            return out.logits[:, -1]

        return out.logits[:, -1], feed

    @torch.no_grad()
    def generate(
        self, prompt_ids: list[list[int]], params: SamplingParams, *, rows: RowIndex | None = None
    ) -> RolloutBatch:
        ids_BP, mask_BP = left_pad(prompt_ids, self.pad_id)
        B = ids_BP.shape[0]
        logits_BV, feed = self._start(ids_BP, mask_BP, params.max_new_tokens)
        tokens, logps = [], []
        done_B = torch.zeros(B, dtype=torch.bool)
        sample = self._sampler(B, params, rows)
        for t in range(params.max_new_tokens):
            # Finished rows go on being sampled and fed their own tokens until all rows are done: rows never
            # mix (attention, GEMM rows and the random draws are per row), so this changes no other row's tokens,
            # and their padding is applied once after the loop instead of at every step.
            token_B, logp_B = sample(logits_BV, t)
            tokens.append(token_B)
            logps.append(logp_B)
            done_B |= torch.isin(token_B, self.stop_ids)
            if bool(done_B.all()):
                break
            logits_BV = feed(token_B)
        tokens_BT = torch.stack(tokens, dim=1)
        logp_BT = torch.stack(logps, dim=1)
        if bool(logp_BT.isnan().any()):  # what torch.multinomial refused at every step, checked once per call
            raise OpdwatchError("rollout: the policy's logits are NaN (its weights have diverged); no rollout sampled")
        stop_BT = torch.isin(tokens_BT, self.stop_ids)
        after_stop_BT = (stop_BT.cumsum(dim=1) - stop_BT.long()) > 0  # strictly after the row's first stop token
        finish: list[FinishReason] = ["eos" if d else "length" for d in done_B.tolist()]
        return RolloutBatch(
            tokens_BT=tokens_BT.masked_fill(after_stop_BT, self.pad_id),
            logp_BT=logp_BT.masked_fill(after_stop_BT, 0.0),
            lengths_B=(~after_stop_BT).sum(dim=1),
            finish_reasons=finish,
        )
