"""Baseline: the task's own supervised loss on hard labels, no distillation."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from kdbench.methods import register
from kdbench.methods.base import Method, RunState
from kdbench.outputs import Outputs


@register
class Baseline(Method):
    """Hard (gold) labels only: the task loss, no distillation."""

    name = "baseline"
    paper = "—"
    teacher = "none"
    accepts = frozenset()  # reads no heads

    @dataclass
    class Config:
        pass

    def loss(
        self, student: Outputs, teacher: Outputs | None, progress: float, state: RunState
    ) -> dict[str, Tensor]:
        return {}
