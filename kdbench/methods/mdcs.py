"""MDCS (Zhao, Wen, Wang & Zhou, "MDCS: More Diverse Experts with Consistency Self-distillation for
Long-tailed Recognition", ICCV 2023)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from kdbench.errors import KDBenchError
from kdbench.losses.mdcs import consistency_sd, diversity_ce, prior_shift
from kdbench.methods import register
from kdbench.methods.base import Method, MethodContext, RunState, require_target
from kdbench.outputs import Outputs


@register
class MDCS(Method):
    """MDCS: diverse experts by logit adjustment, and consistency self-distillation between views.

    The student is E = 3 experts on a shared trunk, each with its own later stages and cosine
    classifier, predicting by the mean of the experts' logits (the `experts` service); every
    training sample comes as a weak view (the card's augmentation) and a strong view (drawn afresh,
    then cutout) in one pass (the `weak_strong_views` service). With n_c the training split's
    class counts, z_e the logits of expert e, λ_e its distribution exponent (−0.5, 1, 2.5: head,
    medium, few) and z̃_e = z_e + log(n^λ_e + 1e-9) (`kdbench.losses.mdcs`):

        L = Σ_e CE(z̃_e, y)  over both views' 2B rows              (terms `mdcs/diversity/e<i>`)
          + w(t) · Σ_e KL(σ(sg(z̃_e,weak)) ‖ σ(z̃_e,strong)) over the samples whose weak view
                         expert e classifies correctly (CIS)       (terms `mdcs/consistency/e<i>`)

    with w(t) = 0.6 · min(t / 20, 1) at the 1-based epoch t, T = 1, the KL summed over classes and
    averaged over the selected samples (0 when none), and no other term (ce_weight 0: the card's
    cross-entropy on the mean prediction is off). This is the official `MDCSLoss.forward` (fistyee/MDCS
    at b07f5bd, `model/loss.py`; the epoch from `base/base_trainer.py`, which counts from 1;
    the views from `data_loader/cifar_data_loaders.py`, view 1 weak, view 2 strong). Where kdbench
    differs: the strong view is the card's augmentation and cutout (the official adds CIFAR
    AutoAugment, which has no counterpart on 8×8 digits or 1-D signals), and the experts keep the
    card's widths (the official `reduce_dimension` narrows them).
    """

    name = "mdcs"
    paper = "Zhao et al., ICCV 2023"
    teacher = "self"
    needs = frozenset({"experts", "weak_strong_views", "ce_heads"})
    accepts = frozenset({"categorical"})
    tune_grid: ClassVar[dict[str, tuple[float, ...]]] = {"consistency_weight": (0.3, 0.6, 1.2, 2.4)}

    @dataclass
    class Config:
        lambda_head: float = -0.5
        lambda_medium: float = 1.0
        lambda_few: float = 2.5
        consistency_weight: float = 0.6
        warmup_epochs: int = 20
        temperature: float = 1.0
        ce_weight: float = 0.0  # the experts' diversity losses replace the card's cross-entropy

    def __init__(self, config: Config, ctx: MethodContext) -> None:
        super().__init__(config, ctx)
        if ctx.train_classes is None:
            raise KDBenchError("mdcs needs the class of every training sample (Adapter.train_classes)")
        classes = ctx.student.heads["cls"].logits.shape[-1]
        counts = torch.bincount(ctx.train_classes.long().cpu(), minlength=classes)
        lambdas = (config.lambda_head, config.lambda_medium, config.lambda_few)
        self.shifts: Tensor  # (E, K) each expert's logit shift, float64
        self.register_buffer("shifts", torch.stack([prior_shift(counts, lam) for lam in lambdas]), persistent=False)

    def loss(
        self, student: Outputs, teacher: Outputs | None, progress: float, state: RunState
    ) -> dict[str, Tensor]:
        c = self.config
        weak, strong = student.auxiliary.get("experts"), student.auxiliary.get("experts_strong")
        if weak is None or strong is None or len(weak) != len(self.shifts):
            raise KDBenchError(f"mdcs needs {len(self.shifts)} experts on both views "
                               "(Outputs.auxiliary['experts'] and ['experts_strong'])")
        weight = c.consistency_weight * min((state.epoch + 1) / max(c.warmup_epochs, 1), 1.0)
        terms = {}
        for i, (w_heads, s_heads, shift) in enumerate(zip(weak, strong, self.shifts, strict=True)):
            w, s = w_heads["cls"], s_heads["cls"]
            y = require_target(w, self.name)
            both = torch.cat([w.logits, s.logits])
            terms[f"mdcs/diversity/e{i}"] = diversity_ce(both, torch.cat([y, y]), shift)
            w_shifted, s_shifted = w.logits + shift.to(w.logits.dtype), s.logits + shift.to(s.logits.dtype)
            terms[f"mdcs/consistency/e{i}"] = weight * consistency_sd(w_shifted, s_shifted, y, c.temperature)
        return terms
