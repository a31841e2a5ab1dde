"""The detection task: a D-FINE-style DETR on synthetic shapes or COCO 2017.

This file declares the task; kdbench.tasks discovers it (docs/architecture.md, Registries).
"""

from kdbench.cards.tasks import DetectionCard
from kdbench.tasks import Task, register_task

register_task(Task(
    "detection",
    adapter="kdbench.adapters.detection.adapter:DetectionAdapter",
    card=DetectionCard,
    metrics=("kdbench.adapters.coco",),
))
