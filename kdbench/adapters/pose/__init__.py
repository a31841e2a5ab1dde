"""The pose task: a top-down SimCC estimator on synthetic figures, COCO or COCO-WholeBody.

This file declares the task; kdbench.tasks discovers it (docs/architecture.md, Registries).
"""

from kdbench.cards.tasks import PoseCard
from kdbench.tasks import Task, register_task

register_task(Task(
    "pose",
    adapter="kdbench.adapters.pose.adapter:PoseAdapter",
    card=PoseCard,
    metrics=("kdbench.adapters.coco",),
))
