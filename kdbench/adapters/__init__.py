"""Task pipelines, one package each, and the adapter registry `ADAPTERS`: task name → its adapter.

Each task package declares itself in its `__init__.py` (kdbench.tasks.TASKS, discovered); its
adapter is a lazy `"module:Class"` entry here, imported and checked against `Adapter` on first
use. Importing this package is cheap (no torch): the adapters and their base class load only
when `get_adapter` or `Adapter` is first used, so `kdbench list` and `--help` stay fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kdbench.registry import Registry
from kdbench.tasks import TASKS

if TYPE_CHECKING:
    from kdbench.adapters.base import Adapter


def _from_tasks() -> None:
    """One lazy entry per declared task."""
    for name in TASKS:
        ADAPTERS.register(name, TASKS[name].adapter)


ADAPTERS: Registry[type[Adapter]] = Registry("task", base="kdbench.adapters.base:Adapter", discover=_from_tasks)


def get_adapter(task: str) -> type[Adapter]:
    """The adapter class of a registered task; an unknown name lists the registered ones."""
    return ADAPTERS[task]


def __getattr__(name: str) -> Any:
    if name == "Adapter":  # `from kdbench.adapters import Adapter` loads torch only here
        from kdbench.adapters.base import Adapter

        return Adapter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ADAPTERS", "TASKS", "Adapter", "get_adapter"]
