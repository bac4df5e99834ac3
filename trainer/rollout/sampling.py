"""Temperature + top-p (nucleus) sampling as pure functions, for the HF engine and for tests.

"Revisiting OPD" samples rollouts with top-p so that the student never visits prefixes built from its own
low-probability tail, where the teacher's guidance is least reliable. The nucleus at a position is the smallest
set of most-likely tokens whose probability reaches `top_p`: a token is kept when the mass of the tokens ranked
strictly above it is < top_p, so the most likely token is always kept (the convention of vLLM and transformers).

The returned log-prob is that of the sampled token under the distribution actually sampled from (temperature,
then nucleus renormalisation): the rollout policy pi_old the PPO ratio needs (vLLM's "processed_logprobs").
Shapes: B rows, V vocabulary.
"""

from __future__ import annotations

import torch

from opdwatch.errors import OpdwatchError


def nucleus_mask(logp_BV: torch.Tensor, top_p: float) -> torch.Tensor:
    """(B, V) bool: True for tokens inside the top-p nucleus of each row of log-probs."""
    if not 0.0 < top_p <= 1.0:
        raise OpdwatchError(f"top_p={top_p}: must be in (0, 1]")
    if top_p >= 1.0:
        return torch.ones_like(logp_BV, dtype=torch.bool)
    sorted_BV, order_BV = logp_BV.sort(dim=-1, descending=True)
    probs_BV = sorted_BV.exp()
    mass_before_BV = probs_BV.cumsum(dim=-1) - probs_BV  # mass of tokens ranked strictly above
    keep_sorted_BV = mass_before_BV < top_p
    keep_sorted_BV[:, 0] = True  # float error must never empty the nucleus
    return torch.zeros_like(keep_sorted_BV).scatter(1, order_BV, keep_sorted_BV)


def sampling_logp(logits_BV: torch.Tensor, *, temperature: float, top_p: float) -> torch.Tensor:
    """(B, V) log-probs of the sampling distribution: softmax(logits / T) restricted to the nucleus, renormalised;
    -inf outside it. temperature must be > 0 (greedy decoding is not a distribution)."""
    if temperature <= 0:
        raise OpdwatchError(f"temperature={temperature}: must be > 0 to sample (use greedy_next for 0)")
    scaled_BV = logits_BV.float() if temperature == 1.0 else logits_BV.float() / temperature  # x / 1 == x exactly
    logp_BV = torch.log_softmax(scaled_BV, dim=-1)
    if top_p >= 1.0:
        return logp_BV
    keep_BV = nucleus_mask(logp_BV, top_p)
    return torch.log_softmax(logp_BV.masked_fill(~keep_BV, float("-inf")), dim=-1)


def greedy_next(logits_BV: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Argmax token and its (untempered) log-prob: (B, V) -> ((B,), (B,))."""
    logp_BV = torch.log_softmax(logits_BV.float(), dim=-1)
    token_B = logp_BV.argmax(dim=-1)
    return token_B, logp_BV.gather(1, token_B[:, None]).squeeze(1)


def multinomial_one(probs_BV: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw per row, (B, V) probabilities -> (B,) int64: the draws of `torch.multinomial(probs_BV, 1)`.

    torch's one-sample multinomial is argmax(p / q), q ~ Exp(1) (its "gumbel" fast path); this runs the same ops on
    the same generator, so tokens and the generator's state afterwards are identical (tests/trainer/test_sampling.py
    checks both), without multinomial's per-call validity checks (a min/max, a row sum and their host reads):
    59 vs 70 us on (64, 29) probabilities here. Non-finite probabilities are not refused here: `HFEngine.generate`
    checks its log-probs once per call.
    """
    return (probs_BV / torch.empty_like(probs_BV).exponential_(1, generator=generator)).argmax(dim=-1)


def sample_next(logits_BV: torch.Tensor, *, temperature: float, top_p: float = 1.0,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row: (B, V) logits -> (token_B int64, logp_B float32 under the sampled distribution).

    temperature 0 means greedy (top_p is then irrelevant).
    """
    if temperature <= 0:
        return greedy_next(logits_BV)
    logp_BV = sampling_logp(logits_BV, temperature=temperature, top_p=top_p)
    token_B = multinomial_one(logp_BV.exp(), generator)
    return token_B, logp_BV.gather(1, token_B[:, None]).squeeze(1)


def sample_from_uniform(logits_BV: torch.Tensor, u_B: torch.Tensor, *, temperature: float,
                        top_p: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse-CDF sampling with one given uniform in [0, 1) per row: (B, V), (B,) -> (token_B, logp_B).

    Unlike `torch.multinomial` on a batch, the token of a row depends only on its own logits and its own uniform,
    so a rollout comes out the same whichever rank or batch it is sampled in (data-parallel runs reproduce
    one-process runs when the uniforms are indexed by the global rollout number). The CDF is summed in float64;
    zero-probability tokens (outside the nucleus) have an empty CDF interval and are never chosen.
    """
    if temperature <= 0:
        return greedy_next(logits_BV)
    logp_BV = sampling_logp(logits_BV, temperature=temperature, top_p=top_p)
    probs_BV = logp_BV.double().exp()
    cdf_BV = probs_BV.cumsum(dim=-1)
    x_B1 = (u_B.double() * cdf_BV[:, -1]).unsqueeze(1)
    token_B = torch.searchsorted(cdf_BV, x_B1, right=True).squeeze(1)
    last_positive_B = (probs_BV > 0).long().cumsum(dim=-1).argmax(dim=-1)  # guards u * total rounding to total
    token_B = torch.minimum(token_B, last_positive_B)
    return token_B, logp_BV.gather(1, token_B[:, None]).squeeze(1)
