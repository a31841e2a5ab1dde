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
    `rank="official"` ranks as the official code does (see `kdbench.losses.uskd_terms`);
    `rank="paper"` uses the paper's probabilities.

    Targets reach the loss as the head carries them, as the official `USKDLoss.forward`
    (yzd-v/cls_KD at 1e5d48f, mmcls/models/dis_losses/uskd.py) takes them: class indices, or
    a soft target y (mixup/cutmix, (B, K)) whose two largest entries v_1 ≥ v_2 at classes
    l_1, l_2 are both targets (lines 33-36):

        L_t    = −(1/N) Σ_n Σ_{j=1,2} p̃_j log S_{l_j},  p̃_j = sg(S_{l_j}² + v_j − mean_batch S_{l_j}²), 0 where v_j = 0
        L_weak = −(1/N) Σ_n Σ_c (0.9·y_c + 0.1/K) log σ(z_weak)_c                      (lines 58-66)
        L_non  as for one label, with w_t, s_t summed over l_1, l_2 and both dropped  (lines 73-90)

    A soft target is not reduced to its argmax first. Where v_2 = 0 (a one-hot given as a
    distribution) l_2 is one of the tied zero entries (the official torch.sort picks one too);
    it carries no L_t term but is dropped from L_non.
    """

    name = "uskd"
    tune_grid: ClassVar[dict[str, tuple[float, ...]]] = {"alpha": (0.05, 0.1, 0.2, 0.5)}
    paper = "Yang et al., Normalized Loss and Customized Soft Labels (NKD/USKD), ICCV 2023"
    teacher = "self"
    needs = frozenset({"features", "sample_heads"})
    accepts = frozenset({"categorical"})

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
            name: nn.Linear(width, head.logits.shape[-1]) for name, head in self.own_heads(ctx.student).items()
        })

    def loss(
        self, student: Outputs, teacher: Outputs | None, progress: float, state: RunState
    ) -> dict[str, Tensor]:
        c = self.config
        mid = pooled(student.features[c.feature])
        terms = {}
        for name, head in self.own_heads(student).items():
            require_target(head, self.name)  # refuses a head without targets
            assert head.target is not None
            parts = uskd_terms(head.logits, self.weak[name](mid), head.target,  # soft targets as they are
                               c.alpha, c.beta, c.mu, rank=c.rank)
            weights = {"target": c.alpha, "non_target": c.beta, "weak": c.mu}
            terms.update({f"uskd_{k}/{name}": weights[k] * v for k, v in parts.items()})
        return terms
