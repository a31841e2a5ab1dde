"""USKD, universal self-knowledge distillation (Yang et al., "From Knowledge Distillation to
Self-Knowledge Distillation: A Unified Approach with Normalized Loss and Customized Soft
Labels", ICCV 2023; official code yzd-v/cls_KD)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from kdbench.losses import uskd_terms
from kdbench.methods import register
from kdbench.methods._features import pooled
from kdbench.methods.base import Method, MethodContext, RunState, require_target
from kdbench.outputs import Outputs


@register
class USKD(Method):
    """USKD: CE + α·L_t + β·L_non (Zipf non-target labels) + μ·L_weak (CIFAR: all 0.1).

    The weak logits come from a Linear on the pooled mid-level feature named `feature`.
    `rank="official"` ranks as the official code does (see `kdbench.losses.uskd`);
    `rank="paper"` uses the paper's probabilities.
    """

    name = "uskd"
    tune_grid: ClassVar[dict[str, tuple[float, ...]]] = {"alpha": (0.05, 0.1, 0.2, 0.5)}
    paper = "Yang et al., Normalized Loss and Customized Soft Labels (NKD/USKD), ICCV 2023"
    teacher = "self"
    needs = frozenset({"features", "sample_heads"})

    @dataclass
    class Config:
        alpha: float = 0.1
        beta: float = 0.1
        mu: float = 0.1
        feature: str = "stage2"
        rank: str = "official"

    def __init__(self, config: Config, ctx: MethodContext) -> None:
        super().__init__(config, ctx)
        if config.feature not in ctx.student.features:
            raise ValueError(f"uskd feature {config.feature!r} not among the student's features "
                             f"{sorted(ctx.student.features)}")
        if config.rank not in ("official", "paper"):
            raise ValueError(f"uskd rank must be 'official' or 'paper', got {config.rank!r}")
        width = pooled(ctx.student.features[config.feature]).shape[-1]
        self.weak = nn.ModuleDict({
            name: nn.Linear(width, head.logits.shape[-1]) for name, head in ctx.student.heads.items()
        })

    def loss(
        self, student: Outputs, teacher: Outputs | None, progress: float, state: RunState
    ) -> dict[str, Tensor]:
        c = self.config
        mid = pooled(student.features[c.feature])
        terms = {}
        for name, head in student.heads.items():
            parts = uskd_terms(head.logits, self.weak[name](mid), require_target(head, self.name),
                               c.alpha, c.beta, c.mu, rank=c.rank)
            weights = {"target": c.alpha, "non_target": c.beta, "weak": c.mu}
            terms.update({f"uskd_{k}/{name}": weights[k] * v for k, v in parts.items()})
        return terms
