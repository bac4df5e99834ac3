"""FSDP2 for students that do not fit one device: sharded training, an unsharded rollout copy, full checkpoints.

    torchrun --nproc_per_node 8 -m opdwatch.cli train cfg.yaml distributed.fsdp=true

`shard_student` puts every decoder layer, and then the whole model, under `fully_shard` (FSDP2). Three things
differ from plain data parallel (parallel.distributed):

- gradients: FSDP reduce-scatters them itself. Its default divides by the world size (a mean over ranks); our
  per-rank losses are already each rank's share of the global token-mean, so the divide factor is set to 1 (a
  sum), and the update equals one process on the same global batch, as in plain data parallel;
- rollouts: a sharded model runs a collective in every forward, and ranks decode for different numbers of steps
  (and only rank 0 validates), so sampling from it would deadlock. Rollouts come from an unsharded copy
  (`RolloutCopy`), refreshed after every update by gathering one full tensor at a time - the role vLLM's weight
  sync plays on GPUs (there, use `engine.kind=vllm` and no copy is kept);
- checkpoints: every rank takes part in gathering full (unsharded) model and optimizer state dicts; rank 0
  writes them, so a checkpoint has the same layout as a one-process one and loads into either.

Works with gloo on CPU (tested with 2 ranks) and NCCL on GPUs. The teacher and the reference stay unsharded on
every rank (frozen, no optimizer state); shard them too if they do not fit.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from opdwatch.errors import OpdwatchError
from opdwatch.trainer.parallel.distributed import DistEnv, full_state_items

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks, one FSDP unit each (HF decoder-only models keep them in a ModuleList
    `model.model.layers`; others are found by class name)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if isinstance(layers, torch.nn.ModuleList):
        return list(layers)
    return [m for m in model.modules() if type(m).__name__.endswith(("DecoderLayer", "Block"))]


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def shard_student(model: torch.nn.Module, env: DistEnv) -> torch.nn.Module:
    """Shard `model` in place over all ranks with FSDP2; gradients are summed over ranks, not averaged."""
    if not env.active:
        raise OpdwatchError("distributed.fsdp needs torchrun with at least 2 processes")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cuda" if env.backend == "nccl" else "cpu", (env.world_size,))
    units = [*decoder_layers(model), model]  # the root last: it owns what the layers do not (embeddings, head)
    for unit in units:
        fully_shard(unit, mesh=mesh)
    for unit in units:  # per unit: these setters do not recurse
        unit.set_gradient_divide_factor(1.0)  # each rank's loss is its share of the global mean: sum, don't average
        unit.set_force_sum_reduction_for_comms(True)  # a plain SUM: gloo has no PREMUL_SUM
    return model


class RolloutCopy:
    """An unsharded replica of a sharded student for sampling; `refresh` (a collective: every rank calls it)
    copies the student's current weights into it."""

    def __init__(self, student: torch.nn.Module) -> None:
        # taken before sharding, so it starts equal to the student
        self.model = copy.deepcopy(student).requires_grad_(False).eval()
        self.refreshes = 0

    @torch.no_grad()
    def refresh(self, student: torch.nn.Module) -> None:
        target = self.model.state_dict()
        for name, full in full_state_items(student):
            target[name].copy_(full)
        self.refreshes += 1


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded state dict on CPU (a collective: every rank calls it; only rank 0 needs to keep it)."""
    return get_model_state_dict(model, options=FULL)


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The unsharded optimizer state, keyed by parameter name (a collective, like `full_model_state`)."""
    return get_optimizer_state_dict(model, optimizer, options=FULL)


def load_full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, model_state: dict[str, Any],
                    optimizer_state: dict[str, Any]) -> None:
    """Load full state dicts (from `full_model_state`/`full_optimizer_state`, read by every rank) into the
    sharded model and its optimizer; each rank keeps its shard."""
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, model_state, options=options)
    set_optimizer_state_dict(model, optimizer, optimizer_state, options=options)
