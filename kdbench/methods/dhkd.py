"""DHKD, dual-head knowledge distillation (Yang et al., "Dual-Head Knowledge Distillation:
Enhancing Logits Utilization with an Auxiliary Head", 2024)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from kdbench.losses import binary_kl_norm
from kdbench.methods import register
from kdbench.methods.base import Method, MethodContext, RunState
from kdbench.outputs import Outputs


@register
class DHKD(Method):
    """DHKD: main head CE only; an auxiliary head on the embedding gets α·BinaryKL-Norm.

    As in the official code, the main (inference) head receives no KD term. The auxiliary head
    is non-linear (Linear-BN-ReLU-Linear, the CIFAR setting) unless `nonlinear` is false.
    The optional gradient-alignment step of the paper is not implemented.
    """

    name = "dhkd"
    tune_grid: ClassVar[dict[str, tuple[float, ...]]] = {"temperature": (1.0, 2.0, 4.0, 8.0)}
    paper = "Yang et al., Dual-Head Knowledge Distillation: Enhancing Logits Utilization with an Auxiliary Head, 2024"
    teacher = "external"
    needs = frozenset({"features", "sample_heads"})

    @dataclass
    class Config:
        alpha: float = 1.0
        temperature: float = 2.0
        nonlinear: bool = True
        feature: str = "embedding"

    def __init__(self, config: Config, ctx: MethodContext) -> None:
        super().__init__(config, ctx)
        width = ctx.student.features[config.feature].shape[-1]
        self.aux = nn.ModuleDict({
            name: _head(width, head.logits.shape[-1], config.nonlinear)
            for name, head in ctx.student.heads.items()
        })

    def loss(
        self, student: Outputs, teacher: Outputs | None, progress: float, state: RunState
    ) -> dict[str, Tensor]:
        assert teacher is not None
        c = self.config
        emb = student.features[c.feature]
        return {
            f"dhkd/{name}": c.alpha * binary_kl_norm(
                self.aux[name](emb), teacher.heads[name].logits, c.temperature, head.mask)
            for name, head in student.heads.items()
        }


def _head(width: int, classes: int, nonlinear: bool) -> nn.Module:
    if not nonlinear:
        return nn.Linear(width, classes)
    return nn.Sequential(nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(),
                         nn.Linear(width, classes))
