"""The toy task: two Gaussian classes in a few dimensions, told apart by a small MLP.

Declared here and found through the `kdbench.tasks` entry point of its distribution; the
declaration imports no torch (the adapter module is named lazily).
"""

from pathlib import Path

from kdbench.tasks import Task, register_task
from toy_task.card import ToyCard

register_task(Task(
    "toy",
    adapter="toy_task.adapter:ToyAdapter",
    card=ToyCard,
    metrics=("toy_task.metrics",),
    cards=Path(__file__).with_name("cards"),
))
