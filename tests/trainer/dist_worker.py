"""Worker launched by `torchrun` from test_distributed.py (not a test module itself).

    torchrun --nproc_per_node 2 tests/trainer/dist_worker.py <out.json>

Each rank takes its shard of one fixed global batch and (1) reduces recorder partials across ranks, (2) computes a
token-mean loss scaled by `global_mean_scale`, all-reduces gradients and takes a clipped Adam step. Rank 0 then
redoes both on the whole batch in one process and writes both results to <out.json> for the test to compare.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from opdwatch import aggregates
from opdwatch.trainer.parallel.distributed import (
    all_reduce_gradients,
    any_rank,
    check_same_parameters,
    global_mean_scale,
    init_from_env,
    reduce_partials,
    shard_bounds,
    shutdown,
)

B, T, V, H = 8, 6, 11, 5


def global_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([6, 2, 5, 1, 6, 3, 4, 6])  # uneven token counts per rank
    mask = (torch.arange(T)[None] < lengths[:, None]).double()
    return {"x": torch.randn(B, T, H, generator=g, dtype=torch.float64),
            "y": torch.randint(0, V, (B, T), generator=g), "mask": mask, "lengths": lengths}


def model() -> torch.nn.Module:
    torch.manual_seed(1)
    return torch.nn.Linear(H, V).double()


def loss_fn(m: torch.nn.Module, batch: dict[str, torch.Tensor], rows: slice) -> tuple[torch.Tensor, float]:
    logp = torch.log_softmax(m(batch["x"][rows]), -1).gather(2, batch["y"][rows][..., None]).squeeze(2)
    mask = batch["mask"][rows]
    return -(logp * mask).sum() / mask.sum().clamp(min=1), float(mask.sum())


def partials_for(batch: dict[str, torch.Tensor], rows: slice) -> aggregates.Partials:
    lengths = batch["lengths"][rows].numpy()
    n_tok = int(lengths.sum())
    rng = np.random.default_rng(int(rows.start or 0))
    return aggregates.partials(
        num_tokens=lengths, truncated=lengths == T, repetitive=lengths > 4, looping=lengths > 5,
        tail_ratio=lengths / 10.0, correct=np.where(lengths % 2 == 0, 1.0, np.nan), student_logp=-rng.random(n_tok),
        teacher_logp=-rng.random(n_tok), ref_logp=None, advantage=rng.standard_normal(n_tok),
        loss_mask=np.ones(n_tok, bool), rep_token=np.arange(n_tok) % 3 == 0, rep_ngram=np.arange(n_tok) % 3 == 0,
        rep_tail=np.zeros(n_tok, bool), eos=np.arange(n_tok) == n_tok - 1)


def clip(m: torch.nn.Module) -> float:
    return float(torch.nn.utils.clip_grad_norm_(m.parameters(), 0.5))


def main(out_path: str) -> None:
    env = init_from_env()
    batch = global_batch()
    start, stop = shard_bounds(B, env)
    rows = slice(start, stop)
    # (1) recorder partials: each rank's shard, then reduced
    local = aggregates.merge([partials_for(batch, slice(s, s + 2)) for s in range(start, stop, 2)])
    merged = reduce_partials(local, env)
    # (2) one data-parallel update
    m = model()
    opt = torch.optim.Adam(m.parameters(), lr=0.1)
    loss, count = loss_fn(m, batch, rows)
    (loss * global_mean_scale(count, env)).backward()
    all_reduce_gradients(m, env)
    norm = clip(m)
    skip = any_rank(env.rank == 1, env)  # rank 1 alone says skip: every rank must see it
    opt.step()
    check_same_parameters(m, env)
    if env.is_main:
        single_parts = aggregates.merge([partials_for(batch, slice(s, s + 2)) for s in range(0, B, 2)])
        ref = model()
        ref_opt = torch.optim.Adam(ref.parameters(), lr=0.1)
        ref_loss, _ = loss_fn(ref, batch, slice(0, B))
        ref_loss.backward()
        ref_norm = clip(ref)
        ref_opt.step()
        Path(out_path).write_text(json.dumps({"world": env.world_size, "merged": aggregates.finalize(merged),
                   "single": aggregates.finalize(single_parts), "grad_norm": norm, "ref_grad_norm": ref_norm,
                   "skip": skip, "weights": [p.detach().flatten().tolist() for p in m.parameters()],
                   "ref_weights": [p.detach().flatten().tolist() for p in ref.parameters()]}))
    shutdown(env)


if __name__ == "__main__":
    main(sys.argv[1])
    # Leave without running C++ static destructors: gloo's teardown at interpreter exit aborted rank 1 once in a
    # CI run ("terminate called without an active exception", SIGABRT after the barrier and destroy_process_group;
    # 0 of 20 local repeats). Everything the test compares is in out.json by now, written by rank 0.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
