"""The task registry, `TASKS`: one `Task` declaration per task package, found by discovery.

A task is a package whose `__init__.py` declares it with `register_task(Task(...))`: its name,
its adapter as a lazy `"module:Class"` (kdbench.adapters.ADAPTERS imports it only when the task
runs), its typed card class (kdbench.cards), the modules that register the metrics it reports
(kdbench.metrics.METRICS imports them) and, optionally, the folder of its own protocol cards
(default: `kdbench/benchmarks/<task>/`). Nothing else names a task: a sixth task is a package and
its cards (docs/extending.md).

Discovery, once, on the first lookup, imports

- every package under `kdbench/adapters/` (the shipped tasks; a contributor's new task is a
  folder dropped there), each of which must register a task, and
- every entry point of the group `kdbench.tasks` (a task installed from another distribution:
  `[project.entry-points."kdbench.tasks"] mytask = "my_package"` in its pyproject.toml), each of
  which must register the task its entry point names.

This module sits in the base layer, below the protocol that types cards by task, so discovery is
the one place a lower layer loads modules of a higher one: by path, as a plugin loader does, and
only the task packages' `__init__` declarations, which import nothing above the base layer and
no torch (tests/test_tasks.py checks both).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

from kdbench.cards.sections import Card
from kdbench.registry import LAZY, Registry, definition

#: The package whose sub-packages are the shipped tasks.
TASK_PACKAGE = "kdbench.adapters"
#: The entry-point group of tasks installed from other distributions.
ENTRY_POINT_GROUP = "kdbench.tasks"


@dataclass(frozen=True)
class Task:
    """What a task package declares.

    Attributes:
        name: the task's name (`--task`, the first folder of its records).
        adapter: `"module:Class"` of its `kdbench.adapters.base.Adapter` subclass.
        card: its typed card class, a `kdbench.cards.sections.Card` subclass.
        metrics: the modules that register the metrics its adapter reports (kdbench.metrics);
            each imports no torch, as the leaderboard reads the metric registry.
        cards: the folder of its protocol cards, if not `kdbench/benchmarks/<name>/`.
    """

    name: str
    adapter: str
    card: type[Card]
    metrics: tuple[str, ...] = ()
    cards: Path | None = None

    def __post_init__(self) -> None:
        if not LAZY.match(self.adapter):
            raise ValueError(f"task {self.name!r}: adapter must be 'module:Class', got {self.adapter!r}")
        if not (isinstance(self.card, type) and issubclass(self.card, Card)):
            raise ValueError(f"task {self.name!r}: card must be a kdbench.cards.sections.Card subclass, "
                             f"got {self.card!r}")


def register_task(task: Task) -> Task:
    """Add a task (called by its package's `__init__.py`); a second task of its name raises."""
    return TASKS.register(task.name, task, where=definition(None, 2))  # type: ignore[no-any-return]


def _discover() -> None:
    package = importlib.import_module(TASK_PACKAGE)
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if not info.ispkg or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{TASK_PACKAGE}.{info.name}").__name__
        if not any(TASKS.where(name).partition(":")[0] == module for name in TASKS.names()):
            raise ValueError(f"package {module} registers no task: a package under "
                             f"kdbench/adapters/ is a task, declared by register_task in its __init__.py")
    for point in entry_points(group=ENTRY_POINT_GROUP):
        point.load()
        if point.name not in TASKS:
            raise ValueError(f"entry point {point.name} = {point.value} (group {ENTRY_POINT_GROUP}) "
                             f"registered no task {point.name!r}")


TASKS: Registry[Task] = Registry("task", base=Task, discover=_discover)


__all__ = ["ENTRY_POINT_GROUP", "TASKS", "TASK_PACKAGE", "Task", "register_task"]
