"""KD++ with the norm-and-direction loss (Wang et al., "Improving Knowledge Distillation via
Regularizing Feature Norm and Direction", 2023)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from kdbench.losses import kd, nd
from kdbench.methods import register
from kdbench.methods.base import Method, MethodContext, RunState, require_target
from kdbench.outputs import Outputs


@register
class ND(Method):
    """KD++: CE + min(1, e/W)·λ_KD·KD + λ_ND·L_ND toward the teacher's class-mean directions.

    e is the 0-based epoch and W = `warmup_epochs` (20; W ≤ 0: no warm-up, weight 1), so the
    first epoch carries no KD term. Follows the official code
    (WangYZ1608/Knowledge-Distillation-via-ND at fc6f3f9, CIFAR/train_cifar_kd.py: the KD loss
    times min(1.0, epoch/args.warm_up), `epoch` running over range(start_epoch, args.epochs)
    with start_epoch 0).

    Class means of the teacher's embedding come from one pass over the training set before
    training. The student embedding is mapped by BatchNorm1d → Dropout 0.5 → Linear when its
    size differs from the teacher's, initialised as the official CIFAR/Models/embtrans_cifar.py
    (`EmbTrans`): BatchNorm weight 1, bias 0; Linear bias 0, its weight left at PyTorch's
    default (the official ImageNet/Models/embtrans.py draws weight and bias from N(0, 0.01²)
    instead; the defaults here are the CIFAR ones). Defaults: CIFAR-100 R32x4→R8x4 (KD 3.5,
    ND 2.0, T 4).
    """

    name = "nd"
    tune_grid: ClassVar[dict[str, tuple[float, ...]]] = {"nd_weight": (0.5, 1.0, 2.0, 4.0)}
    paper = "Wang et al., Improving Knowledge Distillation via Regularizing Feature Norm and Direction, 2023"
    teacher = "external"
    needs = frozenset({"features", "teacher_pass", "sample_heads"})
    accepts = frozenset({"categorical"})

    @dataclass
    class Config:
        kd_weight: float = 3.5
        nd_weight: float = 2.0
        temperature: float = 4.0
        warmup_epochs: int = 20
        feature: str = "embedding"

    def __init__(self, config: Config, ctx: MethodContext) -> None:
        super().__init__(config, ctx)
        assert ctx.teacher is not None
        ds = ctx.student.features[config.feature].shape[-1]
        dt = ctx.teacher.features[config.feature].shape[-1]
        self.project: nn.Module = nn.Identity() if ds == dt else nn.Sequential(
            nn.BatchNorm1d(ds), nn.Dropout(0.5), nn.Linear(ds, dt))
        for module in self.project.modules():  # the official EmbTrans initialisation
            if isinstance(module, nn.BatchNorm1d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)
        (name, head), = self.own_heads(ctx.student).items()
        self.head = name
        self.register_buffer("class_means", torch.zeros(head.logits.shape[-1], dt))

    class_means: Tensor

    def prepare(self, teacher_pass: Callable[[], Iterable[Outputs]]) -> None:
        sums = torch.zeros_like(self.class_means, dtype=torch.float64)
        counts = torch.zeros(sums.shape[0], dtype=torch.float64)
        for out in teacher_pass():
            emb = out.features[self.config.feature].double().cpu()
            target = require_target(out.heads[self.head], self.name).cpu()
            sums.index_add_(0, target, emb)
            counts += torch.bincount(target, minlength=counts.numel()).double()
        self.class_means.copy_((sums / counts.clamp_min(1)[:, None]).float())

    def loss(
        self, student: Outputs, teacher: Outputs | None, progress: float, state: RunState
    ) -> dict[str, Tensor]:
        assert teacher is not None
        c = self.config
        s, t = student.heads[self.head], teacher.heads[self.head]
        ramp = 1.0 if c.warmup_epochs <= 0 else min(state.epoch / c.warmup_epochs, 1.0)
        f_s = self.project(student.features[c.feature])
        f_t = teacher.features[c.feature]
        return {
            "kd": ramp * c.kd_weight * kd(s.logits, t.logits, c.temperature, s.mask),
            "nd": c.nd_weight * nd(f_s, f_t, self.class_means, require_target(s, self.name)),
        }
