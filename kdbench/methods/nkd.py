"""Normalized KD (Yang et al., "From Knowledge Distillation to Self-Knowledge Distillation:
A Unified Approach with Normalized Loss and Customized Soft Labels", ICCV 2023)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from kdbench.losses import nkd
from kdbench.methods import register
from kdbench.methods.base import Method, RunState, require_target
from kdbench.outputs import Outputs


@register
class NKD(Method):
    """NKD: CE + normalized target and non-target KD (ImageNet CNN defaults λ 1, γ 1.5)."""

    name = "nkd"
    tune_grid: ClassVar[dict[str, tuple[float, ...]]] = {"temperature": (1.0, 2.0, 3.0, 4.0)}
    paper = "Yang et al., Normalized Loss and Customized Soft Labels (NKD/USKD), ICCV 2023"
    teacher = "external"

    @dataclass
    class Config:
        temperature: float = 1.0  # λ; CIFAR-100: 3
        gamma: float = 1.5  # CIFAR-100: 3.5

    def loss(
        self, student: Outputs, teacher: Outputs | None, progress: float, state: RunState
    ) -> dict[str, Tensor]:
        c = self.config
        return {
            f"nkd/{name}": nkd(s.logits, t.logits, require_target(s, self.name),
                               c.temperature, c.gamma, s.mask)
            for name, s, t in self.paired(student, teacher)
        }
