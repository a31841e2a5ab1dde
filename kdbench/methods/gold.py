"""GO-LSD, Global Optimal Localization Self-Distillation (Peng et al., "D-FINE: Redefine
Regression Task of DETRs as Fine-grained Distribution Refinement", ICLR 2025)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from kdbench.losses import ddf, layer_self_distillation
from kdbench.methods import register
from kdbench.methods.base import Method, MethodContext, RunState, require_target
from kdbench.outputs import Head, Outputs


@register
class GOLD(Method):
    """GO-LSD: the final layer's detached distributions teach every earlier layer's.

    Each earlier layer l gets w·T²·KL(σ(z_L/T) ‖ σ(z_l/T)), weight 1.5, T 5, summed over layers.
    The weight w is the adapter's per-position weight where it gives one (a detector: IoU of the
    layer's box with its ground truth for matched queries, the final layer's max class score for
    the rest), else sg(p_L[y]), the final layer's confidence in the correct class. Where a head
    marks matched positions, matched and unmatched ones are averaged separately and combined
    with √K weights (D-FINE's DDF); otherwise it is a mean over valid positions. Every layer
    keeps the task loss (deep supervision, as D-FINE's decoder layers do); detectors also use
    the union of the layers' matches for their box losses (`requests`).

    Each of the Outputs' `auxiliary` stacks (a detector's denoising queries) gets the same rule
    within itself, as term "gold/<head>/<stack>": its final layer teaches its earlier ones, its
    two means weighted with the √K of the main stack's matched and unmatched positions
    (Peterande/D-FINE 4a1f73a, src/zoo/dfine/dfine_criterion.py lines 188-229 run on
    `dn_outputs`, whose teacher_corners are the last denoising layer's, dfine_decoder.py
    lines 915-923, and whose num_pos, num_neg are the matching queries').
    """

    name = "gold"
    tune_grid: ClassVar[dict[str, tuple[float, ...]]] = {"weight": (0.5, 1.0, 1.5, 3.0)}
    paper = "Peng et al., D-FINE: Redefine Regression Task of DETRs as Fine-grained Distribution Refinement, ICLR 2025"
    teacher = "self"
    needs = frozenset({"layers"})
    requests = frozenset({"union_matching"})

    @dataclass
    class Config:
        weight: float = 1.5
        temperature: float = 5.0
        heads: str = ""  # comma-separated head names to distil; empty: every head of a kind it accepts

    def __init__(self, config: Config, ctx: MethodContext) -> None:
        super().__init__(config, ctx)
        named = [h.strip() for h in config.heads.split(",") if h.strip()]
        heads = ctx.student.heads
        for name in named:
            if name not in heads:
                raise ValueError(f"gold heads: no head {name!r}; the student's heads are {', '.join(heads)}")
            if heads[name].kind not in self.accepts:
                raise ValueError(f"gold heads: {name!r} is a {heads[name].kind} head; GO-LSD distils "
                                 f"{' and '.join(sorted(self.accepts))} heads")
        self.chosen = named or list(self.own_heads(ctx.student))

    def loss(
        self, student: Outputs, teacher: Outputs | None, progress: float, state: RunState
    ) -> dict[str, Tensor]:
        terms = {}
        c = self.config
        for name in self.chosen:
            final = student.heads[name]
            earlier = [layer[name] for layer in student.layers[:-1]]
            terms[f"gold/{name}"] = c.weight * sum(
                (self._layer(head, final) for head in earlier), start=final.logits.new_zeros(()))
            counts = _counts(final)
            for stack_name, stack in student.auxiliary.items():
                if name not in stack[-1]:
                    continue
                terms[f"gold/{name}/{stack_name}"] = c.weight * sum(
                    (self._layer(layer[name], stack[-1][name], counts) for layer in stack[:-1]),
                    start=final.logits.new_zeros(()))
        return terms

    def _layer(self, head: Head, final: Head, counts: tuple[Tensor, Tensor] | None = None) -> Tensor:
        t = self.config.temperature
        if head.weight is not None:
            weight = head.weight
        else:
            with torch.no_grad():
                target = require_target(final, self.name)
                weight = final.logits.softmax(-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
        if head.matched is None:
            return layer_self_distillation([head.logits], final.logits, weight, t, final.mask)
        k = head.logits.shape[-1]
        valid = torch.ones_like(head.matched) if head.mask is None else head.mask
        return ddf(head.logits[valid].reshape(-1, k), final.logits[valid].reshape(-1, k),
                   weight[valid].reshape(-1), head.matched[valid].reshape(-1), t, counts)


def _counts(head: Head) -> tuple[Tensor, Tensor] | None:
    """(matched, unmatched) valid positions of a head that marks them; None where it does not."""
    if head.matched is None:
        return None
    matched = head.matched if head.mask is None else head.matched[head.mask]
    n = matched.sum().float()  # float32 counts even under bf16 autocast
    return n, matched.numel() - n
