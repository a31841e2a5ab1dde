"""The method registry, `METHODS`. Every module in this package is imported on the first lookup; a
method is one file that decorates its class with `@register`. Duplicate names raise; an unknown
name lists the registered ones; a method's `aliases` (its names before a rename) resolve to it
(docs/architecture.md, Registries).
"""

from __future__ import annotations

import sys

from kdbench.methods.base import TEACHER_KINDS, Method, MethodContext, RunState, make_config
from kdbench.registry import Registry, import_submodules


def _discover() -> None:
    """Import every method module (a module that fails to import raises, loudly)."""
    import_submodules(sys.modules[__name__], skip=("base",))


METHODS: Registry[type[Method]] = Registry("method", base=Method, discover=_discover)


def register(cls: type[Method]) -> type[Method]:
    """Class decorator adding a method under `cls.name` and its `aliases`."""
    if cls.teacher not in TEACHER_KINDS:
        raise ValueError(f"method {cls.name!r} declares teacher {cls.teacher!r}; valid: {', '.join(TEACHER_KINDS)}")
    if (cls.teacher == "online") != ("online_teacher" in cls.runtime_needs):  # the run builds it before the method
        raise ValueError(f"method {cls.name!r}: teacher kind 'online' and the class's runtime_needs "
                         "'online_teacher' go together (kdbench.methods.base.RUNNER_NEEDS)")
    if cls.teacher == "online" and cls.teacher_loss is Method.teacher_loss:
        raise ValueError(f"method {cls.name!r}: teacher kind 'online' needs its own teacher_loss "
                         "(what trains the online teacher beside its task loss)")
    return METHODS.register(cls.name, cls, aliases=cls.aliases)


def registry() -> dict[str, type[Method]]:
    """Registered name → method class, in name order."""
    return dict(METHODS.items())


def get_method(name: str) -> type[Method]:
    """The method registered as `name` or as one of its aliases."""
    return METHODS[name]


__all__ = ["METHODS", "Method", "MethodContext", "RunState", "get_method", "make_config", "register", "registry"]
