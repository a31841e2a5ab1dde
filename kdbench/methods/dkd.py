"""Decoupled KD (Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from kdbench.losses import dkd
from kdbench.methods import register
from kdbench.methods.base import Method, RunState, require_target
from kdbench.outputs import Outputs


@register
class DKD(Method):
    """DKD: CE + min(e/warmup, 1)·(α·TCKD + β·NCKD) (mdistiller's CIFAR-100 defaults)."""

    name = "dkd"
    tune_grid: ClassVar[dict[str, tuple[float, ...]]] = {"beta": (1.0, 2.0, 4.0, 8.0)}
    paper = "Zhao et al., Decoupled Knowledge Distillation, CVPR 2022"
    teacher = "external"
    rebins = True  # reads the teacher only as softmax(z_T/T), shift-invariant

    @dataclass
    class Config:
        alpha: float = 1.0
        beta: float = 8.0
        temperature: float = 4.0
        warmup_epochs: int = 20  # mdistiller counts epochs from 1: weight (e+1)/warmup
        ce_weight: float = 1.0

    def loss(
        self, student: Outputs, teacher: Outputs | None, progress: float, state: RunState
    ) -> dict[str, Tensor]:
        c = self.config
        ramp = min((state.epoch + 1) / max(c.warmup_epochs, 1), 1.0)
        return {
            f"dkd/{name}": ramp
            * dkd(s.logits, t.in_frame(c.temperature), require_target(s, self.name), c.alpha, c.beta,
                  c.temperature, s.mask)
            for name, s, t in self.paired(student, teacher)
        }
