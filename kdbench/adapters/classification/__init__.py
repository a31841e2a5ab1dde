"""The classification task: digits, MNIST-1D and CIFAR-100.

This file declares the task; kdbench.tasks discovers it (docs/architecture.md, Registries).
"""

from kdbench.cards.tasks import ClassificationCard
from kdbench.tasks import Task, register_task

register_task(Task(
    "classification",
    adapter="kdbench.adapters.classification.adapter:ClassificationAdapter",
    card=ClassificationCard,
    metrics=("kdbench.adapters.classification.metrics",),
))
