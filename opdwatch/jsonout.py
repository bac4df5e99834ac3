"""Strict JSON for the ``--json`` output of ``info``, ``analyze`` and ``detect``.

Python's ``json`` writes ``Infinity``, ``-Infinity`` and ``NaN``, which strict parsers (``jq``, JavaScript's
``JSON.parse``, Go, Rust) reject, and a loss or log-prob can be infinite. :func:`dumps` writes every non-finite
number as ``null`` and lists where it was in a top-level ``"nonfinite"`` array, so nothing is lost:

    {"last_train": {"loss/total": null}, "nonfinite": [{"path": ["last_train", "loss/total"], "value": "Infinity"}]}

``path`` is the list of keys and array indices from the top (metric names contain ``/`` and ``.``, so a
joined string would be ambiguous). ``"nonfinite"`` is always present (``[]`` when every number is finite).
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping
from typing import Any

NONFINITE = "nonfinite"
_NAMES = {math.inf: "Infinity", -math.inf: "-Infinity"}


def dumps(data: Mapping[str, Any], *, indent: int | None = 2) -> str:
    """``data`` as strict JSON (RFC 8259) with the ``"nonfinite"`` list added; other objects (paths, dates)
    are written as strings."""
    found: list[dict[str, Any]] = []
    clean = _finite(data, [], found)
    clean[NONFINITE] = found
    # allow_nan=False: should a non-finite number ever slip past _finite, fail loudly, never print Infinity
    return json.dumps(clean, indent=indent, allow_nan=False, default=str)


def _finite(value: Any, path: list[str | int], found: list[dict[str, Any]]) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _finite(v, [*path, str(k)], found) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v, [*path, i], found) for i, v in enumerate(value)]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):  # numpy integers too, which json cannot write
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        if not math.isfinite(value):
            found.append({"path": path, "value": _NAMES.get(value, "NaN")})
            return None
        return value
    return value
