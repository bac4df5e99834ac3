"""Frozen dataclass config trees: ``key=value`` overrides, typed building from dicts, per-section validation.

One implementation for every config in the project: the trainer's ``TrainConfig`` (YAML presets and
``opdwatch train CONFIG key=value``) and the detector's settings (``opdwatch detect --set/--policy``).

    tree = merge(yaml_tree, nest(parse_assignments(["opd.lr=1e-3", "run.name=x"])))
    config = build(TrainConfig, tree)               # typed, validated, one-line OpdwatchError naming the key
    config = with_overrides(config, {"opd.lr": 2e-3})

Conventions:

* Values of ``key=value`` are YAML scalars (``1e-3``, ``true``, ``hi``), so the command line and a YAML file
  (:func:`load_yaml`) mean the same thing. A string given for a non-string field is read the same way (``"8"``
  for an int). Booleans are YAML 1.2's, ``true``/``false`` only: YAML 1.1 also reads ``off``, ``on``, ``yes``
  and ``no`` as booleans, which made ``watch.mode: off`` a bool. A bool field still takes those four words.
* A config dataclass validates its own fields in ``validate()``; :func:`validate_tree` (which :func:`build`
  calls) validates every section, innermost first, then the section holding them (the place for checks that
  span sections). A section's messages start with its field names ("lr=-1: must be > 0") and the tree walk
  prefixes the section's dotted path, so the user reads ``opd.lr=-1: must be > 0``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar, get_type_hints

import yaml

from opdwatch.errors import OpdwatchError

T = TypeVar("T")


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans (true/false in any case): off/on/yes/no stay text."""


_BOOL = "tag:yaml.org,2002:bool"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_SWITCH_WORDS = {"yes": True, "on": True, "no": False, "off": False}  # YAML 1.1 booleans, for bool fields


def load_yaml(text: str) -> Any:
    """A YAML document, read as configs read values (YAML 1.2 booleans); raises yaml.YAMLError."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


# ------------------------------------------------------------------------------ key=value assignments
def parse_value(raw: str) -> Any:
    """The YAML scalar in ``raw`` ("" stays ""; text YAML cannot read stays text)."""
    if not raw.strip():
        return ""
    try:
        return load_yaml(raw)
    except yaml.YAMLError:
        return raw


def parse_assignments(items: Iterable[str], *, flag: str = "override",
                      example: str = "opd.lr=1e-3") -> dict[str, Any]:
    """``["opd.lr=1e-3", "run.name=x"]`` -> ``{"opd.lr": 0.001, "run.name": "x"}`` (dotted keys, YAML values).
    ``flag`` and ``example`` only shape the error for an item without ``=``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise OpdwatchError(f"{flag} {item!r} must look like key=value (e.g. {example})")
        out[key.strip()] = parse_value(raw)
    return out


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted keys -> nested dicts: ``{"a.b": 1}`` -> ``{"a": {"b": 1}}``."""
    tree: dict[str, Any] = {}
    for dotted, value in flat.items():
        keys = dotted.split(".")
        node = tree
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise OpdwatchError(f"override {dotted!r}: {key!r} is not a section")
        node[keys[-1]] = value
    return tree


def merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``extra`` over ``base``, section by section (a non-mapping in ``extra`` replaces what was there)."""
    out = dict(base)
    for key, value in extra.items():
        both = isinstance(value, Mapping) and isinstance(out.get(key), Mapping)
        out[key] = merge(out[key], value) if both else value
    return out


# ----------------------------------------------------------------------------------- typed building
def coerce(value: Any, hint: Any, key: str) -> Any:
    """``value`` as the scalar type ``hint`` (bool, int, float or str), or a one-line error naming ``key``."""
    if isinstance(value, str) and hint in (bool, int, float):
        value = parse_value(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _SWITCH_WORDS:
            return _SWITCH_WORDS[value.lower()]
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            text = str(value)
            # a NUL cannot be in a path (the OS refuses it; Python raises deep inside the run): say which key
            if "\x00" in text:
                raise OpdwatchError(f"{key}={text!r}: contains a NUL character")
            return text
    else:
        raise TypeError(f"{key}: config fields must be bool, int, float, str or a dataclass, not {hint!r}")
    raise OpdwatchError(f"{key}={value!r}: expected {hint.__name__}")


def build(cls: type[T], data: Any, path: str = "") -> T:
    """Instantiate dataclass ``cls`` from a nested mapping (unknown keys and wrong types refused), then
    :func:`validate_tree` it. ``path`` is the dotted place of ``cls`` in a larger tree, for messages."""
    obj = _construct(cls, data, path)
    validate_tree(obj, path)
    return obj


def _construct(cls: type[T], data: Any, path: str) -> T:
    where = f"{path}." if path else ""
    if not isinstance(data, Mapping):
        raise OpdwatchError(f"config section {path or 'root'!r} must be a mapping, got {type(data).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in data:
        if key not in known:  # an f-string, not +: YAML reads a key such as 1 or null as a non-string
            raise OpdwatchError(f"unknown config key {f'{where}{key}'!r} (known: {', '.join(sorted(known))})")
    hints = get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            # a section given in part overrides the parent's default for it, not the section class's defaults
            # (TrainConfig.recorder and demo.teacher have defaults of their own)
            default = _default_of(known[name])
            if default is not None and isinstance(value, Mapping):
                value = merge(to_dict(default), value)
            kwargs[name] = _construct(hint, value, where + name)  # type: ignore[arg-type]
        else:
            kwargs[name] = coerce(value, hint, where + name)
    return cls(**kwargs)


def _default_of(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def validate_tree(obj: Any, path: str = "") -> None:
    """Call ``validate()`` of every section of ``obj``, nested sections first; a section's OpdwatchError
    comes back with the section's dotted path in front (``opd.`` + ``lr=-1: ...``)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            validate_tree(value, f"{path}.{f.name}" if path else f.name)
    check = getattr(obj, "validate", None)
    if check is None:
        return
    try:
        check()
    except OpdwatchError as exc:
        if not path:
            raise
        raise OpdwatchError(f"{path}.{exc}") from None


def to_dict(obj: Any) -> dict[str, Any]:
    """The tree as plain nested dicts (what goes into a run manifest, and what :func:`build` reads)."""
    return dataclasses.asdict(obj)


def with_overrides(obj: T, overrides: Mapping[str, Any], path: str = "") -> T:
    """A copy of the config ``obj`` with dotted keys replaced (``{"detector.h": 6}``), typed and validated."""
    return build(type(obj), merge(to_dict(obj), nest(overrides)), path)
