"""Turn what training loops hand us (lists of arrays, padded (B, T) arrays, torch tensors) into one flat
array per field plus CSR offsets, without importing torch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from opdwatch.errors import OpdwatchError


def to_numpy(x: Any, dtype: Any = None) -> np.ndarray:
    """numpy view of an array-like or a torch tensor (moved to CPU, bf16/fp16 widened to float32)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, duck-typed so we never import torch
        x = x.detach()
        if x.is_floating_point() and x.dtype.itemsize < 4:
            x = x.float()
        x = x.cpu().numpy()
    arr = np.asarray(x)
    return arr.astype(dtype, copy=False) if dtype is not None else arr


def offsets_from_lengths(lengths: np.ndarray) -> np.ndarray:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def flatten(name: str, values: Any, lengths: np.ndarray | None, dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    """(flat values, lengths) from a ragged list of 1-D arrays or a padded (B, T) array.

    With a padded array, ``lengths`` (B,) says how many leading entries of each row are real.
    """
    if isinstance(values, Sequence) and not isinstance(values, (str, bytes)) and not hasattr(values, "shape"):
        rows = [to_numpy(v, dtype).reshape(-1) for v in values]
        got = np.array([len(r) for r in rows], dtype=np.int64)
        if lengths is not None and not np.array_equal(got, lengths):
            raise OpdwatchError(f"{name}: row lengths {got.tolist()[:8]} do not match the token rows")
        flat = np.concatenate(rows) if rows else np.zeros(0, dtype=dtype)
        return flat.astype(dtype, copy=False), got
    arr = to_numpy(values, dtype)
    if arr.ndim != 2:
        raise OpdwatchError(f"{name}: expected a list of 1-D arrays or a padded (B, T) array, got shape {arr.shape}")
    if lengths is None:
        lengths = np.full(arr.shape[0], arr.shape[1], dtype=np.int64)
    if len(lengths) != arr.shape[0] or (len(lengths) and lengths.max() > arr.shape[1]):
        raise OpdwatchError(f"{name}: padded shape {arr.shape} does not fit lengths (max {lengths.max()})")
    keep = np.arange(arr.shape[1])[None, :] < lengths[:, None]  # (B, T)
    return arr[keep], lengths


def per_rollout(name: str, values: Any, count: int, default: Any) -> list[Any]:
    """A per-rollout column from a scalar (broadcast), a sequence of length ``count`` or None."""
    if values is None:
        return [default] * count
    if isinstance(values, (str, bytes, int, float, bool)):
        return [values] * count
    out = list(to_numpy(values).tolist()) if hasattr(values, "shape") else list(values)
    if len(out) != count:
        raise OpdwatchError(f"{name}: {len(out)} values for {count} rollouts")
    return out
