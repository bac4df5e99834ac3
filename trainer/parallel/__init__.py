"""Parallelism: torchrun data parallel (process group, sharding, reductions) and FSDP2 sharding of the student."""
