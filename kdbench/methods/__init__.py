"""The method registry. Every module in this package is imported at start-up; a method is one
file that decorates its class with `@register`. Duplicate names raise; an unknown name lists
the registered ones (docs/architecture.md, Methods).
"""

from __future__ import annotations

import importlib
import pkgutil

from kdbench.errors import unknown
from kdbench.methods.base import Method, MethodContext, RunState, make_config

_REGISTRY: dict[str, type[Method]] = {}
_DISCOVERED = False


def register(cls: type[Method]) -> type[Method]:
    """Class decorator adding a method under `cls.name`."""
    if cls.name in _REGISTRY:
        raise ValueError(
            f"method {cls.name!r} registered twice: {_REGISTRY[cls.name].__module__} "
            f"and {cls.__module__}"
        )
    if cls.teacher not in ("none", "external", "self"):
        raise ValueError(f"method {cls.name!r} declares teacher {cls.teacher!r}")
    _REGISTRY[cls.name] = cls
    return cls


def _discover() -> None:
    """Import every method module once (a module that fails to import raises, loudly)."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_") and info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")
    _DISCOVERED = True


def registry() -> dict[str, type[Method]]:
    _discover()
    return dict(_REGISTRY)


def get_method(name: str) -> type[Method]:
    methods = registry()
    if name not in methods:
        raise unknown("method", name, methods)
    return methods[name]


__all__ = ["Method", "MethodContext", "RunState", "get_method", "make_config", "register", "registry"]
