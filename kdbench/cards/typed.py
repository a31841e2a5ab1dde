"""Parse plain YAML/JSON values into typed, frozen dataclasses, checking every key and value.

A section is a dataclass; a field's type is one of `int`, `float`, `bool`, `str`, a `Literal`,
`list[T]`, `T | None`, `A | B` (the first that parses), `dict[str, Any]` (free-form, e.g. a
card's `reference`) or another section. Ranges sit in the field's metadata: `ge`, `gt`, `le`,
`lt` (see `bounded`). Every error is one line naming the dotted path, what was expected and,
for an unknown key, the valid ones.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import MISSING, field
from functools import cache
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from kdbench.errors import UsageError

T = TypeVar("T")


def bounded(default: Any = MISSING, *, ge: float | None = None, gt: float | None = None,
            le: float | None = None, lt: float | None = None, factory: Any = MISSING) -> Any:
    """A dataclass field with a range: `epochs: int = bounded(ge=1)`."""
    meta = {k: v for k, v in {"ge": ge, "gt": gt, "le": le, "lt": lt}.items() if v is not None}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def parse(cls: type[T], value: Any, where: str) -> T:
    """`value` (a mapping) as an instance of the dataclass `cls`; UsageError on anything wrong."""
    if not isinstance(value, dict):
        raise UsageError(f"{where}: expected a mapping of {_keys(cls)}, got {_show(value)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in value:
        if key not in fields:
            raise UsageError(f"{where}: unknown key {key!r}; valid: {_keys(cls)}")
    hints = _hints(cls)  # type: ignore[arg-type]
    kwargs = {}
    for name, f in fields.items():
        path = f"{where}.{name}" if where else name
        if name not in value:
            if f.default is MISSING and f.default_factory is MISSING:
                raise UsageError(f"{path}: missing (a required key)")
            continue
        parsed = _value(hints[name], value[name], path)
        _check_range(f, parsed, path)
        kwargs[name] = parsed
    return cls(**kwargs)


def _keys(cls: type) -> str:
    return ", ".join(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_range(f: dataclasses.Field[Any], value: Any, path: str) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    checks = {"ge": (lambda a, b: a >= b, "≥"), "gt": (lambda a, b: a > b, ">"),
              "le": (lambda a, b: a <= b, "≤"), "lt": (lambda a, b: a < b, "<")}
    lower = [(f.metadata[k], s) for k, s in (("gt", "<"), ("ge", "≤")) if k in f.metadata]
    upper = [(f.metadata[k], s) for k, s in (("lt", "<"), ("le", "≤")) if k in f.metadata]
    interval = f" (valid: {lower[0][0]} {lower[0][1]} {f.name} {upper[0][1]} {upper[0][0]})" if lower and upper else ""
    for key, (ok, sign) in checks.items():
        if key in f.metadata and not ok(value, f.metadata[key]):
            raise UsageError(f"{path}: must be {sign} {f.metadata[key]}, got {value!r}{interval}")


def _name(tp: Any) -> str:
    origin = get_origin(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(map(str, get_args(tp)))
    if origin in (Union, types.UnionType):
        return " or ".join(_name(a) for a in get_args(tp))
    if origin is list:
        return f"a list of {_name(get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return f"a mapping of {_keys(tp)}"  # type: ignore[arg-type]
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _value(tp: Any, value: Any, path: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _value(option, value, path)
            except UsageError as e:
                errors.append(str(e))
        if len(errors) == 1:
            raise UsageError(errors[0])
        raise UsageError(f"{path}: expected {_name(tp)}, got {_show(value)}")
    if origin is Literal:
        if value not in get_args(tp):
            raise UsageError(f"{path}: {_show(value)} is not valid; valid: {', '.join(map(str, get_args(tp)))}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise UsageError(f"{path}: expected {_name(tp)}, got {_show(value)}")
        return [_value(get_args(tp)[0], v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UsageError(f"{path}: expected a mapping, got {_show(value)}")
        key_tp, value_tp = get_args(tp)
        return {_value(key_tp, k, path): _value(value_tp, v, f"{path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return parse(tp, value, path)  # type: ignore[arg-type]
    if tp is bool:
        if not isinstance(value, bool):
            raise UsageError(f"{path}: expected true or false, got {_show(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UsageError(f"{path}: expected an integer, got {_show(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"{path}: expected a number, got {_show(value)}")
        if value != value or value in (float("inf"), float("-inf")):
            raise UsageError(f"{path}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise UsageError(f"{path}: expected a string, got {_show(value)}")
        return value
    raise TypeError(f"{path}: unsupported field type {tp!r}")


def to_plain(instance: Any) -> Any:
    """A parsed section back to plain dicts and lists (every field, defaults included)."""
    if dataclasses.is_dataclass(instance) and not isinstance(instance, type):
        return {f.name: to_plain(getattr(instance, f.name)) for f in dataclasses.fields(instance)}
    if isinstance(instance, (list, tuple)):
        return [to_plain(v) for v in instance]
    if isinstance(instance, dict):
        return {k: to_plain(v) for k, v in instance.items()}
    return instance


def leaves(cls: type, prefix: str = "") -> list[str]:
    """Every settable dotted key of a section (for `--set` error messages)."""
    out = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        path = f"{prefix}{f.name}"
        inner = [a for a in (get_args(hints[f.name]) or (hints[f.name],)) if dataclasses.is_dataclass(a)]
        out += leaves(inner[0], f"{path}.") if inner else [path]  # type: ignore[arg-type]
    return out
