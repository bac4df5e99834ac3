"""Truncated (teacher top-K) reverse KL vs a brute-force float64 loop over plain Python floats."""

from __future__ import annotations

import math

import pytest
import torch

from opdwatch.errors import OpdwatchError
from opdwatch.trainer.objectives.objective_topk import (
    TeacherTopK,
    support_coverage,
    teacher_topk,
    topk_reverse_kl_loss,
    topk_reverse_kl_per_token,
)

B, T, V = 3, 4, 9


def _softmax(row: list[float]) -> list[float]:
    m = max(row)
    e = [math.exp(x - m) for x in row]
    z = sum(e)
    return [x / z for x in e]


def brute_force_kl(student: torch.Tensor, teacher: torch.Tensor, k: int) -> list[list[float]]:
    """Per-position KL(p~_s || p~_t) over the teacher's k most likely tokens, by explicit loops."""
    out = []
    for b in range(student.shape[0]):
        row = []
        for t in range(student.shape[1]):
            ps = _softmax(student[b, t].tolist())
            pt = _softmax(teacher[b, t].tolist())
            support = sorted(range(len(pt)), key=lambda a: -pt[a])[:k]
            zs, zt = sum(ps[a] for a in support), sum(pt[a] for a in support)
            row.append(sum(ps[a] / zs * (math.log(ps[a] / zs) - math.log(pt[a] / zt)) for a in support))
        out.append(row)
    return out


@pytest.fixture
def logits() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return (torch.randn(B, T, V, generator=g, dtype=torch.float64) * 2,
            torch.randn(B, T, V, generator=g, dtype=torch.float64) * 2)


@pytest.mark.parametrize("k", [1, 2, 4, V])
def test_matches_brute_force(logits: tuple[torch.Tensor, torch.Tensor], k: int) -> None:
    student, teacher = logits
    got = topk_reverse_kl_per_token(student, teacher_topk(teacher, k))
    want = torch.tensor(brute_force_kl(student, teacher, k), dtype=torch.float64)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    if k == 1:  # a one-token support leaves nothing to match
        assert torch.all(got.abs() < 1e-12)


def test_full_support_is_the_full_reverse_kl(logits: tuple[torch.Tensor, torch.Tensor]) -> None:
    student, teacher = logits
    ls, lt = torch.log_softmax(student, -1), torch.log_softmax(teacher, -1)
    full = (ls.exp() * (ls - lt)).sum(-1)
    torch.testing.assert_close(topk_reverse_kl_per_token(student, teacher_topk(teacher, V)), full)


def test_loss_is_masked_token_mean(logits: tuple[torch.Tensor, torch.Tensor]) -> None:
    student, teacher = logits
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.float64)
    per_token = brute_force_kl(student, teacher, 3)
    want = sum(per_token[b][t] for b in range(B) for t in range(T) if mask[b, t]) / float(mask.sum())
    assert float(topk_reverse_kl_loss(student, teacher_topk(teacher, 3), mask)) == pytest.approx(want, rel=1e-12)
    assert float(topk_reverse_kl_loss(student, teacher_topk(teacher, 3), torch.zeros(B, T))) == 0.0


def test_gradient_matches_finite_differences(logits: tuple[torch.Tensor, torch.Tensor]) -> None:
    student, teacher = logits
    support = teacher_topk(teacher, 4)
    mask = torch.ones(B, T, dtype=torch.float64)
    x = student.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s: topk_reverse_kl_loss(s, support, mask), (x,))


def test_gradient_only_touches_support_and_unmasked_positions(logits: tuple[torch.Tensor, torch.Tensor]) -> None:
    student, teacher = logits
    support = teacher_topk(teacher, 3)
    mask = torch.ones(B, T, dtype=torch.float64)
    mask[1, 2] = 0.0
    x = student.clone().requires_grad_(True)
    topk_reverse_kl_loss(x, support, mask).backward()
    in_support = torch.zeros(B, T, V, dtype=torch.bool).scatter(-1, support.ids_BTK, True)
    assert torch.all(x.grad[~in_support] == 0)
    assert torch.all(x.grad[1, 2] == 0)
    assert x.grad[0, 0].abs().sum() > 0


def test_teacher_topk_keeps_full_distribution_logps(logits: tuple[torch.Tensor, torch.Tensor]) -> None:
    _, teacher = logits
    support = teacher_topk(teacher, 3)
    full = torch.log_softmax(teacher, -1)
    torch.testing.assert_close(support.logp_BTK, full.gather(-1, support.ids_BTK))
    assert torch.all(support.logp_BTK[..., :-1] >= support.logp_BTK[..., 1:])  # largest first
    assert torch.equal(support.rows(torch.tensor([2])).ids_BTK, support.ids_BTK[2:3])


def test_coverage_is_student_mass_on_support(logits: tuple[torch.Tensor, torch.Tensor]) -> None:
    student, teacher = logits
    cov = support_coverage(student, teacher_topk(teacher, V))
    torch.testing.assert_close(cov, torch.ones(B, T, dtype=torch.float64))
    assert torch.all(support_coverage(student, teacher_topk(teacher, 2)) < 1)


def test_mixed_precision_promotes_to_the_wider_dtype(logits: tuple[torch.Tensor, torch.Tensor]) -> None:
    student, teacher = logits
    got = topk_reverse_kl_per_token(student.float(), teacher_topk(teacher, 4))
    assert got.dtype == torch.float64


@pytest.mark.parametrize("k", [0, V + 1])
def test_bad_k_is_one_line_error(logits: tuple[torch.Tensor, torch.Tensor], k: int) -> None:
    with pytest.raises(OpdwatchError, match="top-K support size"):
        teacher_topk(logits[1], k)


def test_support_slots_without_teacher_mass_are_left_out(logits: tuple[torch.Tensor, torch.Tensor]) -> None:
    """A -inf teacher entry (a student id the teacher cannot express) drops out on both sides; KL stays finite."""
    student, teacher = logits
    support = teacher_topk(teacher, 4)
    blocked = TeacherTopK(support.ids_BTK, support.logp_BTK.clone())
    blocked.logp_BTK[..., -1] = float("-inf")
    x = student.clone().requires_grad_(True)
    got = topk_reverse_kl_per_token(x, blocked)
    want = topk_reverse_kl_per_token(student, TeacherTopK(support.ids_BTK[..., :3], support.logp_BTK[..., :3]))
    torch.testing.assert_close(got.detach(), want)
    got.sum().backward()
    assert torch.isfinite(x.grad).all()
