"""Hinton KD (Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from kdbench.losses import kd
from kdbench.methods import register
from kdbench.methods.base import Method, RunState
from kdbench.outputs import Outputs


@register
class KD(Method):
    """Hinton KD: w_ce·CE + w_kd·T²·KL(σ(z_T/T) ‖ σ(z_S/T)) (mdistiller's CIFAR defaults)."""

    name = "kd"
    tune_grid: ClassVar[dict[str, tuple[float, ...]]] = {"temperature": (1.0, 2.0, 4.0, 8.0)}
    paper = "Hinton, Vinyals & Dean, Distilling the Knowledge in a Neural Network, 2015"
    teacher = "external"

    @dataclass
    class Config:
        temperature: float = 4.0
        ce_weight: float = 0.1
        kd_weight: float = 0.9

    def loss(
        self, student: Outputs, teacher: Outputs | None, progress: float, state: RunState
    ) -> dict[str, Tensor]:
        c = self.config
        return {
            f"kd/{name}": c.kd_weight * kd(s.logits, t.logits, c.temperature, s.mask)
            for name, s, t in self.paired(student, teacher)
        }
