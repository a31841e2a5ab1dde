"""Task pipelines, one package each. The registry maps a task name to its adapter class."""

from __future__ import annotations

import importlib

from kdbench.adapters.base import Adapter
from kdbench.errors import unknown

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


__all__ = ["TASKS", "Adapter", "get_adapter"]
