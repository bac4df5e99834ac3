"""Scoring counterfactuals with a causal LM: log-prob of every loop token and of stopping at every copy boundary.

torch is imported inside the functions: the probe package imports without it. Rows are right-padded (the real
tokens keep positions 0..n-1, so no position ids are needed), sorted by length and scored `batch_size` at a time;
only each row's response positions go through log-softmax (in float32 or wider, whatever the model's dtype, e.g.
bf16 on GPU). The log-prob of stopping is the log-sum-exp over the model's stop ids (one event, as the trainer's
EOS canonicalisation merges several student stop ids); a teacher with another vocabulary sees the sequence through
`to_model_ids` (the EOS mapping) and stops on its own EOS.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from opdwatch.probe.counterfactual import Counterfactual

IdMap = Callable[[list[int]], list[int]]  # student ids -> the scoring model's ids


def model_device(model: Any) -> Any:  # noqa: ANN401 - torch.device
    return next(model.parameters()).device


def score_counterfactuals(
    model: Any,  # noqa: ANN401 - a transformers causal LM
    cfs: Sequence[Counterfactual],
    *,
    stop_ids: Sequence[int],
    to_model_ids: IdMap | None = None,
    batch_size: int = 16,
    progress: Any = None,  # noqa: ANN401 - a tqdm-like bar, advanced by the rows scored
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per counterfactual: ((T,) log-prob of each loop token, (J,) log-prob of stopping after boundary j).

    Runs under no_grad in eval mode and puts the model back in the mode it was in.
    """
    import torch

    if not stop_ids:
        raise ValueError("stop_ids must not be empty")
    device = model_device(model)
    stop = torch.as_tensor(list(stop_ids), device=device)
    order = sorted(range(len(cfs)), key=lambda i: len(cfs[i].prompt_ids) + len(cfs[i].tokens))
    out: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(cfs)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(order), max(1, batch_size)):
                rows = order[start : start + max(1, batch_size)]
                for i, scored in zip(rows, _score_batch(model, [cfs[i] for i in rows], stop, to_model_ids),
                                     strict=True):
                    out[i] = scored
                if progress is not None:
                    progress.update(len(rows))
    finally:
        model.train(was_training)
    return [o for o in out if o is not None]


def _score_batch(model: Any, cfs: Sequence[Counterfactual], stop: Any,  # noqa: ANN401
                 to_model_ids: IdMap | None) -> list[tuple[np.ndarray, np.ndarray]]:
    import torch

    seqs = [list(cf.prompt_ids) + list(cf.tokens) for cf in cfs]
    if to_model_ids is not None:
        seqs = [to_model_ids(s) for s in seqs]
    width = max(len(s) for s in seqs)
    ids_BS = torch.zeros((len(seqs), width), dtype=torch.long)
    attn_BS = torch.zeros((len(seqs), width), dtype=torch.long)
    for b, s in enumerate(seqs):
        ids_BS[b, : len(s)] = torch.tensor(s, dtype=torch.long)
        attn_BS[b, : len(s)] = 1
    device = stop.device
    logits_BSV = model(input_ids=ids_BS.to(device), attention_mask=attn_BS.to(device)).logits
    results = []
    for b, cf in enumerate(cfs):
        P, T = len(cf.prompt_ids), len(cf.tokens)
        if P < 1:
            raise ValueError("a probe prompt must have at least one token")
        # positions P-1 .. P+T-1 predict response tokens 0..T-1 and, at the end, what follows the last copy
        logits_TV = logits_BSV[b, P - 1 : P + T]
        logp_TV = torch.log_softmax(logits_TV, dim=-1, dtype=torch.promote_types(logits_TV.dtype, torch.float32))
        targets_T = ids_BS[b, P : P + T].to(device)
        token_logp_T = logp_TV[:T].gather(1, targets_T[:, None]).squeeze(1)
        bounds_J = torch.as_tensor(cf.boundaries, device=device)  # EOS after `bound` tokens: logits row `bound`
        eos_logp_J = torch.logsumexp(logp_TV[bounds_J][:, stop], dim=-1)
        results.append((token_logp_T.double().cpu().numpy(), eos_logp_J.double().cpu().numpy()))
    return results
