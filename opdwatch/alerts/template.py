"""A webhook's JSON body: the alert itself, or a template filled with its fields, validated before sending.

    body = render_body('{"text": "$title at step $step", "details": "$evidence"}', msg.as_dict())

A template is a JSON object whose strings may hold ``$field`` / ``${field}`` placeholders
(opdwatch.alerts.settings.TEMPLATE_FIELDS, checked when the config is built). A string that is exactly one
placeholder takes the field's value as it is (a number, a list of evidence); inside longer text a field is
put in as text. Values are filled into the parsed tree, never into the template's characters, so no field
can break the JSON; the result is still checked: strict JSON (no NaN), at most ``MAX_BODY_BYTES``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from opdwatch.alerts.settings import check_template

MAX_BODY_BYTES = 256 * 1024  # Slack refuses bodies far smaller than this; anything larger is a broken template
_PLACEHOLDER = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")


class BodyError(ValueError):
    """The body cannot be sent (recorded as a failed delivery with this message)."""


def render_body(template: str, fields: Mapping[str, Any]) -> bytes:
    """The UTF-8 JSON body for ``fields`` (an AlertMessage.as_dict()); "" = all of them as one object."""
    tree: Any = dict(fields) if not template else _fill(check_template(template), fields)
    try:
        data = json.dumps(jsonable(tree), allow_nan=False, ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise BodyError(f"body is not valid JSON: {exc}") from None
    if len(data) > MAX_BODY_BYTES:
        raise BodyError(f"body is {len(data)} bytes (at most {MAX_BODY_BYTES})")
    return data


def jsonable(node: Any) -> Any:
    """``node`` with non-finite floats as None and tuples as lists (strict JSON)."""
    if isinstance(node, float):
        return node if math.isfinite(node) else None
    if isinstance(node, Mapping):
        return {str(k): jsonable(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [jsonable(v) for v in node]
    return node


def _fill(node: Any, fields: Mapping[str, Any]) -> Any:
    if isinstance(node, str):
        whole = _PLACEHOLDER.fullmatch(node)
        if whole:
            return fields.get(whole[1])
        return _PLACEHOLDER.sub(lambda m: _text(fields.get(m[1])), node)
    if isinstance(node, dict):
        return {_fill(k, fields) if isinstance(k, str) else k: _fill(v, fields) for k, v in node.items()}
    if isinstance(node, list):
        return [_fill(v, fields) for v in node]
    return node


def _text(value: Any) -> str:
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(jsonable(value), ensure_ascii=False)
    return "" if value is None else str(value)
