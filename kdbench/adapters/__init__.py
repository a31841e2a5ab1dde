"""Task pipelines, one package each. The registry maps a task name to its adapter class.

Importing this package is cheap: `TASKS` is plain data, and the adapter base class (which imports
torch) loads on first use of `Adapter` or `get_adapter`, so `kdbench list` and `--help` stay fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from kdbench.errors import unknown

if TYPE_CHECKING:
    from kdbench.adapters.base import Adapter

#: task name → module path of its adapter (imported on demand: a task's heavy dependencies
#: load only when that task runs).
TASKS: dict[str, str] = {
    "classification": "kdbench.adapters.classification.adapter:ClassificationAdapter",
    "detection": "kdbench.adapters.detection.adapter:DetectionAdapter",
    "pose": "kdbench.adapters.pose.adapter:PoseAdapter",
    "translation": "kdbench.adapters.translation.adapter:TranslationAdapter",
    "ood": "kdbench.adapters.ood.adapter:OODAdapter",
}


def get_adapter(task: str) -> type[Adapter]:
    if task not in TASKS:
        raise unknown("task", task, TASKS)
    module, _, name = TASKS[task].partition(":")
    cls: type[Adapter] = getattr(importlib.import_module(module), name)
    return cls


def __getattr__(name: str) -> Any:
    if name == "Adapter":  # `from kdbench.adapters import Adapter` loads torch only here
        from kdbench.adapters.base import Adapter

        return Adapter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["TASKS", "Adapter", "get_adapter"]
