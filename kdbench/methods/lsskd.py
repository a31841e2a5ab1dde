"""LSSKD, layered self-supervised knowledge distillation with auxiliary classifiers.

No official code was found. kdbench's reading of the paper's description: auxiliary classifiers
on intermediate stages (removed at inference) are trained with the task loss, and knowledge is
transferred one-to-one between adjacent stages: stage l+1's detached distribution teaches stage
l, the final head teaching the last auxiliary one. The self-supervised pretext augmentation
the paper layers on top is not reproduced here.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import ClassVar

from torch import Tensor

from kdbench.losses import kd
from kdbench.methods import register
from kdbench.methods.base import Method, RunState
from kdbench.outputs import Outputs


@register
class LSSKD(Method):
    """LSSKD: one-to-one KD from each stage's head to the stage before it (kdbench reading)."""

    name = "lsskd"
    tune_grid: ClassVar[dict[str, tuple[float, ...]]] = {"temperature": (1.0, 2.0, 3.0, 4.0)}
    paper = "Layered self-supervised knowledge distillation (auxiliary classifiers); no official code"
    teacher = "self"
    needs = frozenset({"layers"})

    @dataclass
    class Config:
        temperature: float = 3.0
        weight: float = 1.0

    def loss(
        self, student: Outputs, teacher: Outputs | None, progress: float, state: RunState
    ) -> dict[str, Tensor]:
        c = self.config
        terms = {}
        for name, final in self.own_heads(student).items():
            chain = [layer[name].logits for layer in student.layers]
            total = sum(
                (kd(shallow, deep, c.temperature, final.mask)
                 for shallow, deep in pairwise(chain)),
                start=final.logits.new_zeros(()),
            )
            terms[f"lsskd/{name}"] = c.weight * total
        return terms
