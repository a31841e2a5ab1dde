"""GO-LSD, Global Optimal Localization Self-Distillation (Peng et al., "D-FINE: Redefine
Regression Task of DETRs as Fine-grained Distribution Refinement", ICLR 2025)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from kdbench.losses import layer_self_distillation
from kdbench.methods import register
from kdbench.methods.base import Method, RunState, require_target
from kdbench.outputs import Outputs


@register
class GOLD(Method):
    """GO-LSD: the final layer's detached distributions teach every earlier layer's.

    On tasks with per-layer heads (auxiliary classifiers), each earlier layer l gets
    w·T²·KL(σ(z_L/T) ‖ σ(z_l/T)) with w = sg(p_L[y]) the final layer's confidence in the
    correct class, mean over valid positions, summed over layers (DDF's weight 1.5, T 5).
    Every layer also keeps the task loss (deep supervision, as D-FINE's decoder layers do).
    """

    name = "gold"
    paper = "Peng et al., D-FINE: Redefine Regression Task of DETRs as Fine-grained Distribution Refinement, ICLR 2025"
    teacher = "self"
    needs = frozenset({"layers"})

    @dataclass
    class Config:
        weight: float = 1.5
        temperature: float = 5.0

    def loss(
        self, student: Outputs, teacher: Outputs | None, progress: float, state: RunState
    ) -> dict[str, Tensor]:
        c = self.config
        terms = {}
        for name, final in student.heads.items():
            target = require_target(final, self.name)
            with torch.no_grad():
                conf = final.logits.softmax(-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
            earlier = [layer[name].logits for layer in student.layers[:-1]]
            terms[f"gold/{name}"] = c.weight * layer_self_distillation(
                earlier, final.logits, conf, c.temperature, final.mask
            )
        return terms
