"""Hinton KD (Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from kdbench.losses import binary_kd, kd
from kdbench.methods import register
from kdbench.methods.base import Method, RunState
from kdbench.outputs import Outputs

#: β of BCKD's binary distillation on sigmoid heads (the official `NovelKDLoss.forward` default).
BINARY_BETA = 1.0


@register
class KD(Method):
    """Hinton KD: w_ce·CE + w_kd·T²·KL(σ(z_T/T) ‖ σ(z_S/T)) (mdistiller's CIFAR defaults).

    By head kind (kdbench.outputs.HEAD_KINDS):

    - categorical: the formula above, per position, summed over classes, averaged over valid
      positions (`kdbench.losses.kd`).
    - binned: the same KL over bins, which is localization distillation (LD: Zheng et al.,
      "Localization Distillation for Dense Object Detection", CVPR 2022) on a detector's box-edge
      distributions. LD compares the two models' edge distributions where they share a reference
      (the same anchors: open-mmlab/mmdetection at 0b4d8a4, mmdet/models/dense_heads/ld_head.py
      `LDHead.loss_single`, the teacher's `soft_corners` at the student's `pos_inds`); a DETR's
      bins are offsets from each model's own initial box, so the teacher's distribution at T is
      first re-expressed on the student's reference and bins (`Head.in_frame`; detection's
      `align` and `fdr.rebin_edges`). LD's own weighting (loss weight 0.25, T 10, KL averaged
      over the bins and weighted by the student's max class score) is not taken over: the
      card's `kd` settings apply as on any head.
    - binary (an independent sigmoid per class: detection's VFL head, RetinaNet's focal head): no
      softmax over classes, which would turn C independent decisions into one distribution; the
      per-class binary distillation of BCKD (Yang et al., ICCV 2023; `kdbench.losses.binary_kd`,
      β = 1, no temperature), w_kd·Σ_c BCE(z_S,c; σ(z_T,c))·|σ(z_T,c) − σ(z_S,c)|, averaged over
      valid positions.

    `ce_weight` scales the hard-label term of every head it distils (detection: the VFL term
    "cls"); other task terms keep weight 1.
    """

    name = "kd"
    tune_grid: ClassVar[dict[str, tuple[float, ...]]] = {"temperature": (1.0, 2.0, 4.0, 8.0)}
    paper = "Hinton, Vinyals & Dean, Distilling the Knowledge in a Neural Network, 2015"
    teacher = "external"
    accepts = frozenset({"categorical", "binned", "binary"})
    rebins = True  # it reads the teacher only as softmax(z_T/T) (forward KL)

    @dataclass
    class Config:
        temperature: float = 4.0
        ce_weight: float = 0.1
        kd_weight: float = 0.9

    def loss(
        self, student: Outputs, teacher: Outputs | None, progress: float, state: RunState
    ) -> dict[str, Tensor]:
        c = self.config
        terms = {}
        for name, s, t in self.paired(student, teacher):
            if s.kind == "binary":
                value = binary_kd(s.logits, t.logits, BINARY_BETA, s.mask)
            else:
                value = kd(s.logits, t.in_frame(c.temperature), c.temperature, s.mask)
            terms[f"kd/{name}"] = c.kd_weight * value
        return terms
