"""The OOD-detection task: a text classifier scored on ID and OOD sentences.

This file declares the task; kdbench.tasks discovers it (docs/architecture.md, Registries).
"""

from kdbench.cards.tasks import OODCard
from kdbench.tasks import Task, register_task

register_task(Task(
    "ood",
    adapter="kdbench.adapters.ood.adapter:OODAdapter",
    card=OODCard,
    metrics=("kdbench.adapters.ood.scores", "kdbench.adapters.classification.metrics"),
))
