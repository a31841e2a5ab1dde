"""DHKD, dual-head knowledge distillation (Yang et al., "Dual-Head Knowledge Distillation:
Enhancing Logits Utilization with an Auxiliary Head", 2024)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from kdbench.losses import binary_kl_norm
from kdbench.methods import register
from kdbench.methods.base import Method, MethodContext, RunState
from kdbench.outputs import Outputs

#: The official NonLinearClassifier's hidden width and dropout (penghui-yang/DHKD, models/classifier.py).
AUX_HIDDEN = 200
AUX_DROPOUT = 0.1


@register
class DHKD(Method):
    """DHKD: main head CE only; an auxiliary head on the embedding gets α·BinaryKL-Norm.

    As in the official code, the main (inference) head receives no KD term. The auxiliary head
    is the official `NonLinearClassifier` (penghui-yang/DHKD at 7976c69, models/classifier.py,
    lines 4-18): Linear(d, 200) → Dropout(0.1) → BatchNorm1d(200) → ReLU → Linear(200, K),
    at PyTorch's default initialisation, the CIFAR command's `--nonlinear`; `nonlinear` false
    gives one Linear(d, K) (`--linear`, the ImageNet command).

    `ga` (default False, as the official `--ga` flag's default in train_student.py, lines
    64-66; the README's CIFAR command sets it) replaces the single backward pass by the
    official gradient alignment (helper/optimizer.py `OptimGradAlign.ga_backward`, lines
    33-60; called in helper/loops.py, lines 114-130): with g_task the gradient of the task
    terms and g_kd that of the α-weighted KD term, each over every stepped parameter (student
    and auxiliary head, flattened into one vector, 0 where a term does not reach),

        g_kd ← g_kd − (g_kd·g_task / ‖g_task‖²)·g_task   only where g_kd·g_task < 0,
        ∇ = g_task + g_kd,

    so a KD gradient that conflicts with the task's is projected onto the plane normal to it.
    Every stepped parameter gets its part of ∇ (0 included), as `_set_grad` does; gradient
    clipping, if the card sets it, follows. Under `torchrun` each rank aligns its own shard's
    gradients before they are averaged (the official GA runs in one process).
    """

    name = "dhkd"
    tune_grid: ClassVar[dict[str, tuple[float, ...]]] = {"temperature": (1.0, 2.0, 4.0, 8.0)}
    paper = "Yang et al., Dual-Head Knowledge Distillation: Enhancing Logits Utilization with an Auxiliary Head, 2024"
    teacher = "external"
    needs = frozenset({"features", "sample_heads"})
    accepts = frozenset({"categorical"})

    @dataclass
    class Config:
        alpha: float = 1.0
        temperature: float = 2.0
        nonlinear: bool = True
        feature: str = "embedding"
        ga: bool = False

    def __init__(self, config: Config, ctx: MethodContext) -> None:
        super().__init__(config, ctx)
        width = ctx.student.features[config.feature].shape[-1]
        self.aux = nn.ModuleDict({
            name: _head(width, head.logits.shape[-1], config.nonlinear)
            for name, head in self.own_heads(ctx.student).items()
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
            for name, head in self.own_heads(student).items()
        }

    def backward(self, loss: Tensor, terms: dict[str, Tensor], params: list[nn.Parameter]) -> None:
        if not self.config.ga:
            loss.backward()
            return
        task = [v for k, v in terms.items() if k.startswith("task/")]
        kd = [v for k, v in terms.items() if not k.startswith("task/")]
        g_task = _flat_gradient(task, params, retain=True)
        g_kd = _flat_gradient(kd, params, retain=False)
        dot = torch.dot(g_kd, g_task)
        if dot < 0:
            g_kd = g_kd - dot * g_task / g_task.norm() ** 2
        merged = g_task + g_kd
        start = 0
        for p in params:
            p.grad = merged[start:start + p.numel()].view_as(p).clone()
            start += p.numel()


def _flat_gradient(parts: list[Tensor], params: list[nn.Parameter], retain: bool) -> Tensor:
    """d(Σ parts)/d params flattened into one vector, 0 where a parameter is not reached."""
    total = torch.stack(parts).sum() if parts else None
    if total is None or not total.requires_grad:
        return torch.cat([torch.zeros_like(p).reshape(-1) for p in params])
    grads = torch.autograd.grad(total, params, retain_graph=retain, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                      for p, g in zip(params, grads, strict=True)])


def _head(width: int, classes: int, nonlinear: bool) -> nn.Module:
    if not nonlinear:
        return nn.Linear(width, classes)
    return nn.Sequential(nn.Linear(width, AUX_HIDDEN), nn.Dropout(AUX_DROPOUT), nn.BatchNorm1d(AUX_HIDDEN),
                         nn.ReLU(), nn.Linear(AUX_HIDDEN, classes))
