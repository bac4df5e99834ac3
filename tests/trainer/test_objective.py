"""Objective functions vs brute-force float64 loops on hand-built tensors."""

from __future__ import annotations

import math

import pytest
import torch

from opdwatch.trainer.objectives.objective import (
    clipped_surrogate_loss,
    full_vocab_kl,
    masked_mean,
    reverse_kl_advantage,
    sft_nll,
    total_loss,
)

B, T, V = 3, 5, 7


@pytest.fixture
def tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.float64)
    return {
        "logp": -torch.rand(B, T, generator=g, dtype=torch.float64) * 3,
        "old": -torch.rand(B, T, generator=g, dtype=torch.float64) * 3,
        "adv": torch.randn(B, T, generator=g, dtype=torch.float64),
        "s_logits": torch.randn(B, T, V, generator=g, dtype=torch.float64),
        "r_logits": torch.randn(B, T, V, generator=g, dtype=torch.float64),
        "mask": mask,
    }


def test_advantage_is_teacher_minus_student_and_detached() -> None:
    student = torch.tensor([[-1.0, -2.0]], dtype=torch.float64, requires_grad=True)
    teacher = torch.tensor([[-0.5, -4.0]], dtype=torch.float64)
    adv = reverse_kl_advantage(teacher, student)
    assert torch.equal(adv, torch.tensor([[0.5, -2.0]], dtype=torch.float64))
    assert not adv.requires_grad


def test_clipped_surrogate_matches_loop(tensors: dict[str, torch.Tensor]) -> None:
    eps = 0.2
    total, count = 0.0, 0
    for b in range(B):
        for t in range(T):
            if tensors["mask"][b, t]:
                rho = math.exp(tensors["logp"][b, t] - tensors["old"][b, t])
                a = float(tensors["adv"][b, t])
                total += min(rho * a, min(max(rho, 1 - eps), 1 + eps) * a)
                count += 1
    got = clipped_surrogate_loss(tensors["logp"], tensors["old"], tensors["adv"], tensors["mask"], eps)
    assert got.dtype == torch.float64
    assert float(got) == pytest.approx(-total / count, abs=1e-12)


def test_clipped_surrogate_gradient_is_policy_gradient_at_ratio_one(tensors: dict[str, torch.Tensor]) -> None:
    """At pi = pi_old the gradient wrt logp is -A / N on unmasked tokens (clipping inactive)."""
    logp = tensors["old"].clone().requires_grad_(True)
    clipped_surrogate_loss(logp, tensors["old"], tensors["adv"], tensors["mask"], 0.2).backward()
    expected = -tensors["adv"] * tensors["mask"] / tensors["mask"].sum()
    assert torch.allclose(logp.grad, expected, atol=1e-12)


def test_full_vocab_kl_matches_loop(tensors: dict[str, torch.Tensor]) -> None:
    total, count = 0.0, 0
    for b in range(B):
        for t in range(T):
            if tensors["mask"][b, t]:
                zs = sum(math.exp(x) for x in tensors["s_logits"][b, t].tolist())
                zr = sum(math.exp(x) for x in tensors["r_logits"][b, t].tolist())
                kl = 0.0
                for v in range(V):
                    p = math.exp(tensors["s_logits"][b, t, v]) / zs
                    q = math.exp(tensors["r_logits"][b, t, v]) / zr
                    kl += p * math.log(p / q)
                total += kl
                count += 1
    got = full_vocab_kl(tensors["s_logits"], tensors["r_logits"], tensors["mask"])
    assert float(got) == pytest.approx(total / count, abs=1e-12)
    assert float(full_vocab_kl(tensors["s_logits"], tensors["s_logits"], tensors["mask"])) == pytest.approx(
        0.0
    )


def test_sft_nll_and_masked_mean(tensors: dict[str, torch.Tensor]) -> None:
    values = [(-float(tensors["logp"][b, t])) for b in range(B) for t in range(T) if tensors["mask"][b, t]]
    assert float(sft_nll(tensors["logp"], tensors["mask"])) == pytest.approx(
        sum(values) / len(values), abs=1e-12
    )
    assert float(masked_mean(tensors["logp"], torch.zeros(B, T, dtype=torch.float64))) == 0.0


def test_total_loss_is_eq6() -> None:
    one = torch.tensor(1.0, dtype=torch.float64)
    got = total_loss(opd=one, kl=2 * one, sft=3 * one, beta=0.1, alpha=0.5)
    assert float(got) == pytest.approx(1.0 + 0.1 * 2 + 0.5 * 3)
