"""Framework metric names -> ours, and which framework logged a set of names.

Each format module declares a :class:`~opdwatch.importers.model.Framework` (its rules and signature); this
module applies them. The rules are tables, documented field by field in docs/integrations.md.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

from opdwatch.importers.model import Framework, MetricRule


def numeric_items(record: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric leaves of a (nested) record, nested keys joined with ``/``; strings, lists and None are
    skipped (they are not step metrics)."""
    out: dict[str, float] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(numeric_items(value, f"{name}/"))
        elif isinstance(value, (bool, int, float)):
            out[name] = float(value)
    return out


@lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def strip(framework: Framework, name: str) -> str:
    p = framework.strip_prefix
    return name[len(p):] if p and name.startswith(p) else name


def mapped(framework: Framework, metrics: Mapping[str, float]) -> dict[str, list[tuple[float, str, MetricRule]]]:
    """our key -> [(value, the framework's name, rule), ...] for the framework's metrics with a counterpart.

    The first entry (rules in table order, names alphabetically within a rule) is the one that stands in for
    our figure when the records cannot give it; every entry is compared with ours when they can.
    """
    out: dict[str, list[tuple[float, str, MetricRule]]] = {}
    names = sorted(metrics)
    for rule in framework.rules:
        pattern = _compiled(rule.pattern)
        for name in names:
            value = metrics[name]
            if pattern.fullmatch(strip(framework, name)) and math.isfinite(value):
                out.setdefault(rule.target, []).append((float(rule.transform(value)), name, rule))
                break
    return out


def stored(framework: Framework, metrics: Mapping[str, float]) -> dict[str, float]:
    """Every framework metric under ``<framework>/<its name>``: kept whole, never confused with ours."""
    return {f"{framework.name}/{strip(framework, k)}": float(v) for k, v in metrics.items()}


def recognise(names: Iterable[str], frameworks: Iterable[Framework]) -> tuple[Framework | None, str]:
    """The framework whose signature matches most of ``names``, and a sentence saying what matched."""
    names = sorted(set(names))
    scores: list[tuple[int, str, Framework, list[str]]] = []
    for fw in frameworks:
        hits = [n for n in names if any(_compiled(p).fullmatch(n) for p in fw.signature)]
        if hits:
            scores.append((len(hits), fw.name, fw, hits))
    if not scores:
        return None, "no framework's metric names matched"
    scores.sort(key=lambda s: (-s[0], s[1]))
    count, _, best, hits = scores[0]
    others = ", ".join(f"{name} {n}" for n, name, _, _ in scores[1:])
    shown = ", ".join(hits[:4]) + (" ..." if len(hits) > 4 else "")
    return best, (f"{best.name} ({count} of its metric names: {shown})"
                  + (f"; also matched: {others}" if others else ""))
