"""Shared rules for the detector stack's ``state_dict()`` / ``load_state_dict()``, so that a resumed run
(``opdwatch train --resume``) watches exactly as an uninterrupted one would.

* States are plain JSON-able Python: dicts with str keys, lists, str, int, float, bool and None. The trainer
  keeps them in its torch.save checkpoint, but they also survive ``json.dumps(..., allow_nan=False)``.
* Non-finite floats are stored as the strings ``"nan"``, ``"inf"`` and ``"-inf"`` (:func:`encode_float`):
  strict JSON has no literal for them, and None would be ambiguous with "absent". In practice only a
  baseline's centre and variance are NaN (before its warm-up ends).
* Every top-level state carries the settings it was made under; :func:`check_settings` refuses a state from
  other settings with a one-line :class:`OpdwatchError`. Statistics gathered for other signals, thresholds or
  warm-up lengths would mean something else, and mixing them would misbehave without any sign.
* A state that is not shaped like one (missing keys, wrong types) is refused the same way (:func:`reading`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opdwatch.errors import OpdwatchError

_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def encode_float(x: float) -> float | str:
    """``x`` as a float when finite, else ``"nan"`` / ``"inf"`` / ``"-inf"``."""
    x = float(x)
    if math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def decode_float(value: float | int | str) -> float:
    """Inverse of :func:`encode_float` (also accepts plain non-finite floats, e.g. from a pickle)."""
    if isinstance(value, str):
        if value not in _NON_FINITE:
            raise ValueError(f"not a float: {value!r}")
        return _NON_FINITE[value]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"not a float: {value!r}")
    return float(value)


def check_settings(what: str, saved: Any, current: Mapping[str, Any]) -> None:
    """Raise unless ``saved`` (from a state) equals ``current`` (``dataclasses.asdict`` of the settings)."""
    if not isinstance(saved, Mapping):
        raise OpdwatchError(f"{what} state has no settings: it was not made by {what}.state_dict()")
    diff = [f"{key}={saved.get(key)!r} (now {current.get(key)!r})"
            for key in sorted(set(saved) | set(current)) if saved.get(key) != current.get(key)]
    if diff:
        raise OpdwatchError(f"{what} state was saved with other settings: {', '.join(diff)}")


@contextmanager
def reading(what: str) -> Iterator[None]:
    """Turn the errors of reading a malformed state into one-line :class:`OpdwatchError`s."""
    try:
        yield
    except OpdwatchError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise OpdwatchError(f"{what} state is malformed ({type(exc).__name__}: {exc})") from None
