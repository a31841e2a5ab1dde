"""The translation task: phrases, Multi30k and IWSLT'14 with a native Transformer.

This file declares the task; kdbench.tasks discovers it (docs/architecture.md, Registries).
"""

from kdbench.cards.tasks import TranslationCard
from kdbench.tasks import Task, register_task

register_task(Task(
    "translation",
    adapter="kdbench.adapters.translation.adapter:TranslationAdapter",
    card=TranslationCard,
    metrics=("kdbench.adapters.translation.metrics",),
))
