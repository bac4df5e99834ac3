"""The estimator registry dispatches to the pure objective functions."""

from __future__ import annotations

import pytest
import torch

from opdwatch.trainer.objectives.objective import clipped_surrogate_loss
from opdwatch.trainer.objectives.objective_topk import teacher_topk, topk_reverse_kl_loss
from opdwatch.trainer.objectives.variants import ESTIMATORS, OPDInputs


@pytest.fixture
def inputs() -> OPDInputs:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 6, generator=g, dtype=torch.float64)
    tokens = torch.randint(0, 6, (2, 3), generator=g)
    logp = torch.log_softmax(logits, -1).gather(2, tokens[..., None]).squeeze(2)
    return OPDInputs(logits_BTV=logits, logp_BT=logp, old_logp_BT=logp - 0.05,
                     advantage_BT=torch.randn(2, 3, generator=g, dtype=torch.float64),
                     mask_BT=torch.tensor([[1.0, 1, 0], [1, 1, 1]], dtype=torch.float64), clip_eps=0.2,
                     teacher_topk=teacher_topk(torch.randn(2, 3, 6, generator=g, dtype=torch.float64), 3))


def test_registry_names_and_needs() -> None:
    assert set(ESTIMATORS) == {"sampled_token", "topk_reverse_kl"}
    assert not ESTIMATORS["sampled_token"].needs_topk and ESTIMATORS["topk_reverse_kl"].needs_topk


def test_each_estimator_is_its_pure_function(inputs: OPDInputs) -> None:
    x = inputs
    assert float(ESTIMATORS["sampled_token"].loss(x)) == float(
        clipped_surrogate_loss(x.logp_BT, x.old_logp_BT, x.advantage_BT, x.mask_BT, x.clip_eps))
    assert float(ESTIMATORS["topk_reverse_kl"].loss(x)) == float(
        topk_reverse_kl_loss(x.logits_BTV, x.teacher_topk, x.mask_BT))


def test_topk_without_support_fails_loudly(inputs: OPDInputs) -> None:
    inputs.teacher_topk = None
    with pytest.raises(ValueError, match="top-K support"):
        ESTIMATORS["topk_reverse_kl"].loss(inputs)
