"""Top-p sampling: never outside the nucleus (many draws), the nucleus is minimal, log-probs are the sampled ones."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from opdwatch.errors import OpdwatchError
from opdwatch.trainer.rollout.sampling import (
    greedy_next,
    multinomial_one,
    nucleus_mask,
    sample_from_uniform,
    sample_next,
    sampling_logp,
)


def brute_nucleus(logits: list[float], temperature: float, top_p: float) -> set[int]:
    """Smallest set of most likely tokens whose mass reaches top_p, computed with Python floats (float64)."""
    scaled = [x / temperature for x in logits]
    m = max(scaled)
    z = sum(math.exp(x - m) for x in scaled)
    probs = [math.exp(x - m) / z for x in scaled]
    kept, mass = set(), 0.0
    for a in sorted(range(len(probs)), key=lambda a: -probs[a]):
        kept.add(a)
        mass += probs[a]
        if mass >= top_p:
            break
    return kept


@pytest.mark.parametrize("top_p", [0.3, 0.7, 0.9, 0.95])
@pytest.mark.parametrize("temperature", [0.6, 1.0, 1.3])
def test_never_samples_outside_the_nucleus(top_p: float, temperature: float) -> None:
    g = torch.Generator().manual_seed(int(top_p * 100 + temperature * 10))
    rows, V, draws = 16, 50, 400  # 6,400 draws per setting, 76,800 over the grid
    logits = torch.randn(rows, V, generator=g) * 3
    nuclei = [brute_nucleus(logits[r].tolist(), temperature, top_p) for r in range(rows)]
    batch = logits.repeat(draws, 1)  # (rows * draws, V), row i is logits[i % rows]
    tokens, logp = sample_next(batch, temperature=temperature, top_p=top_p, generator=g)
    outside = [(i % rows, t) for i, t in enumerate(tokens.tolist()) if t not in nuclei[i % rows]]
    assert outside == []
    assert torch.isfinite(logp).all()
    # Some rows have more than one nucleus token, so the test actually exercises sampling, not argmax.
    assert any(len(n) > 1 for n in nuclei)


def test_empirical_frequencies_follow_the_renormalised_nucleus() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([[2.0, 1.5, 1.0, 0.0, -1.0, -3.0]])
    want = sampling_logp(logits, temperature=1.0, top_p=0.8).exp()[0].double()
    n = 40_000
    tokens, _ = sample_next(logits.repeat(n, 1), temperature=1.0, top_p=0.8, generator=g)
    freq = torch.bincount(tokens, minlength=6).double() / n
    assert torch.all((freq - want).abs() < 4 * torch.sqrt(want * (1 - want) / n) + 1e-12)
    assert freq[want == 0].sum() == 0


def test_logp_is_that_of_the_sampled_distribution() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(64, 30, generator=g)
    tokens, logp = sample_next(logits, temperature=0.8, top_p=0.9, generator=g)
    full = sampling_logp(logits, temperature=0.8, top_p=0.9)
    torch.testing.assert_close(logp, full.gather(1, tokens[:, None]).squeeze(1))
    torch.testing.assert_close(full.exp().sum(-1), torch.ones(64))  # renormalised over the nucleus


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-8, 8), min_size=2, max_size=40), st.floats(0.05, 0.999))
def test_nucleus_is_the_minimal_set(values: list[float], top_p: float) -> None:
    logp = torch.log_softmax(torch.tensor([values], dtype=torch.float64), dim=-1)
    keep = nucleus_mask(logp, top_p)[0]
    probs = logp[0].exp()
    kept_mass = float(probs[keep].sum())
    assert kept_mass >= top_p - 1e-9 or bool(keep.all())
    # dropping the least likely kept token falls below top_p: nothing superfluous is kept
    assert kept_mass - float(probs[keep].min()) < top_p + 1e-9
    # every kept token is at least as likely as every dropped one
    if not bool(keep.all()):
        assert float(probs[keep].min()) >= float(probs[~keep].max())


def test_top_p_one_is_plain_temperature_sampling() -> None:
    logits = torch.randn(4, 10, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(sampling_logp(logits, temperature=2.0, top_p=1.0), torch.log_softmax(logits / 2, -1))
    assert bool(nucleus_mask(logits, 1.0).all())


def test_greedy_at_temperature_zero() -> None:
    logits = torch.tensor([[0.1, 3.0, 0.2], [5.0, 0.0, 0.0]])
    tokens, logp = sample_next(logits, temperature=0.0, top_p=0.5)
    assert tokens.tolist() == [1, 0]
    torch.testing.assert_close(logp, greedy_next(logits)[1])


@pytest.mark.parametrize("top_p", [0.0, 1.5, -0.1])
def test_bad_top_p_is_one_line_error(top_p: float) -> None:
    with pytest.raises(OpdwatchError, match="top_p"):
        nucleus_mask(torch.zeros(1, 3), top_p)


@pytest.mark.parametrize("top_p", [0.5, 0.9, 1.0])
def test_inverse_cdf_sampling_stays_in_nucleus_and_matches_frequencies(top_p: float) -> None:
    g = torch.Generator().manual_seed(7)
    logits = torch.tensor([[2.0, 1.5, 1.0, 0.0, -1.0, -3.0]])
    n = 40_000
    u = torch.rand(n, generator=g, dtype=torch.float64)
    tokens, logp = sample_from_uniform(logits.repeat(n, 1), u, temperature=1.0, top_p=top_p)
    want = sampling_logp(logits, temperature=1.0, top_p=top_p).exp()[0].double()
    nucleus = brute_nucleus(logits[0].tolist(), 1.0, top_p)
    assert set(tokens.tolist()) <= nucleus
    freq = torch.bincount(tokens, minlength=6).double() / n
    assert torch.all((freq - want).abs() < 4 * torch.sqrt(want * (1 - want) / n) + 1e-12)
    torch.testing.assert_close(logp, sampling_logp(logits, temperature=1.0, top_p=top_p)[0, tokens])


def test_inverse_cdf_row_depends_only_on_its_own_uniform() -> None:
    """The same row and uniform give the same token whatever else is in the batch (rank invariance)."""
    g = torch.Generator().manual_seed(8)
    logits, u = torch.randn(6, 20, generator=g), torch.rand(6, generator=g, dtype=torch.float64)
    whole, _ = sample_from_uniform(logits, u, temperature=0.9, top_p=0.9)
    halves = torch.cat([sample_from_uniform(logits[i:i + 3], u[i:i + 3], temperature=0.9, top_p=0.9)[0]
                        for i in (0, 3)])
    assert torch.equal(whole, halves)
    edge, _ = sample_from_uniform(logits[:1], torch.tensor([1.0 - 2.0 ** -53], dtype=torch.float64),
                                  temperature=1.0, top_p=0.5)
    assert int(edge) in brute_nucleus(logits[0].tolist(), 1.0, 0.5)


@pytest.mark.parametrize(("B", "V"), [(64, 29), (5, 37), (1, 1000), (3, 2)])
def test_multinomial_one_draws_what_torch_multinomial_draws(B: int, V: int) -> None:
    ours, theirs = torch.Generator().manual_seed(B * V), torch.Generator().manual_seed(B * V)
    for step in range(20):
        probs = torch.softmax(3 * torch.randn(B, V, generator=torch.Generator().manual_seed(step)), dim=-1)
        if step % 2:
            probs[:, ::2] = 0.0  # tokens outside a nucleus: never drawn by either
        token_B = multinomial_one(probs, ours)
        assert torch.equal(token_B, torch.multinomial(probs, 1, generator=theirs).squeeze(1))
        assert bool((probs.gather(1, token_B[:, None]) > 0).all())
    assert torch.equal(ours.get_state(), theirs.get_state())  # the next draw of either generator is the same too
