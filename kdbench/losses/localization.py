"""D-FINE's detection losses: FGL on box-edge distributions, VFL, and DETR's L1 / GIoU box losses.

Peng, Li, Wu, Zhang, Sun, Wu, "D-FINE: Redefine Regression Task of DETRs as Fine-grained
Distribution Refinement", ICLR 2025. Each function follows one method of `DFINECriterion` in
the official code, Peterande/D-FINE, src/zoo/dfine/dfine_criterion.py, including its
reduction: a sum divided by `num_boxes`, the caller's matched-box count (the official
averages it over devices and clamps it to at least 1 before passing it). The task adapter
does the matching; these functions see only the matched rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def fgl(
    corner_logits: Tensor,
    left_bin: Tensor,
    weight_left: Tensor,
    weight_right: Tensor,
    iou: Tensor,
    num_boxes: float | Tensor,
) -> Tensor:
    """D-FINE's Fine-Grained Localization (FGL) loss, a unimodal distribution focal loss.

    Follows `DFINECriterion.loss_local` ('loss_fgl') and `unimodal_distribution_focal_loss`
    of the official code. For K matched queries with edge-bin logits L_{k,e} and targets from
    `kdbench.adapters.detection.fdr.bbox2distance`,

        L_FGL = (1/num_boxes) · Σ_k IoU_k · Σ_{e=1..4} [ω_←·CE(L_{k,e}, n_←) + ω_→·CE(L_{k,e}, n_→)],

    with n_→ = n_← + 1. The official `avg_factor` is the number of boxes (not boxes × 4): the
    four edges of a query are summed. IoU_k is the plain IoU of query k's decoded box with its
    GT; it and the targets are detached, so only the logits get gradients.

    Args:
        corner_logits: (K, 4, N+1) edge-bin logits of the matched queries.
        left_bin: (K, 4) long, n_← in [0, N−1].
        weight_left: (K, 4) ω_←.
        weight_right: (K, 4) ω_→.
        iou: (K,) IoU of each matched query's box with its GT.
        num_boxes: normaliser (the official `num_boxes`, for GO-LSD the union's count).

    Returns:
        Scalar loss.
    """
    log_probs = F.log_softmax(corner_logits, dim=-1)  # (K, 4, N+1)
    index = left_bin.long().unsqueeze(-1)
    ce_left = -log_probs.gather(-1, index).squeeze(-1)  # (K, 4)
    ce_right = -log_probs.gather(-1, index + 1).squeeze(-1)
    per_edge = weight_left.detach().to(ce_left) * ce_left + weight_right.detach().to(ce_left) * ce_right
    per_edge = per_edge * iou.detach().to(per_edge).unsqueeze(-1)  # the query's IoU on its 4 edges
    return per_edge.sum() / num_boxes


def varifocal(
    logits: Tensor,
    target_score: Tensor,
    alpha: float = 0.75,
    gamma: float = 2.0,
    num_boxes: float | Tensor = 1.0,
    positive: Tensor | None = None,
) -> Tensor:
    """Varifocal loss (VFL) as D-FINE's `DFINECriterion.loss_labels_vfl`.

    Zhang et al., "VarifocalNet", CVPR 2021, in the form of the official D-FINE code. With
    sigmoid logits z, target score t (the IoU of the matched query's box at its GT class,
    else 0) and the one-hot positive mask y,

        weight = α·sg(σ(z))^γ·(1 − y) + t,
        L_VFL = (1/num_boxes) · Σ_{b,q,c} weight · BCE(z, t).

    The official reduction `loss.mean(1).sum() * Q / num_boxes` equals this sum over batch,
    queries and classes divided by `num_boxes`. The weight and t are detached. When
    `positive` is None, y = (t > 0); that differs from the official only at a matched class
    whose IoU is exactly 0 (official weight 0 there, here α·σ(z)^γ), so pass the mask for
    exact agreement.

    Args:
        logits: (B, Q, C) class logits.
        target_score: (B, Q, C) IoU at each matched query's class, 0 elsewhere.
        alpha: α, the weight of the negatives.
        gamma: γ, the focusing exponent of the negatives.
        num_boxes: normaliser (the official `num_boxes`, the number of GT boxes).
        positive: (B, Q, C) bool, True at each matched query's class; None: t > 0.

    Returns:
        Scalar loss.
    """
    target_score = target_score.detach().to(logits.dtype)
    pos = (target_score > 0) if positive is None else positive.bool()
    pred_score = torch.sigmoid(logits).detach()
    weight = alpha * pred_score.pow(gamma) * (~pos).to(logits.dtype) + target_score
    loss = F.binary_cross_entropy_with_logits(logits, target_score, weight=weight, reduction="none")
    return loss.sum() / num_boxes


def box_l1(pred_cxcywh: Tensor, gt_cxcywh: Tensor, num_boxes: float | Tensor) -> Tensor:
    """DETR's L1 box loss, as D-FINE's `DFINECriterion.loss_boxes` ('loss_bbox').

    Carion et al., "End-to-End Object Detection with Transformers", ECCV 2020; Peng et al.,
    "D-FINE", ICLR 2025. L_1 = (1/num_boxes) · Σ_k Σ_{j=1..4} |b̂_{k,j} − b_{k,j}| on
    normalised (cx, cy, w, h). The GT boxes are detached.

    Args:
        pred_cxcywh: (K, 4) predicted boxes of the matched queries.
        gt_cxcywh: (K, 4) their GT boxes.
        num_boxes: normaliser.

    Returns:
        Scalar loss.
    """
    return F.l1_loss(pred_cxcywh, gt_cxcywh.detach(), reduction="sum") / num_boxes


def box_giou(pred_cxcywh: Tensor, gt_cxcywh: Tensor, num_boxes: float | Tensor) -> Tensor:
    """DETR's GIoU box loss, as D-FINE's `DFINECriterion.loss_boxes` ('loss_giou').

    Rezatofighi et al., "Generalized Intersection over Union", CVPR 2019; Peng et al.,
    "D-FINE", ICLR 2025. L_GIoU = (1/num_boxes) · Σ_k (1 − GIoU(b̂_k, b_k)), the boxes
    converted to xyxy. The GT boxes are detached.

    Args:
        pred_cxcywh: (K, 4) predicted boxes of the matched queries, normalised (cx, cy, w, h).
        gt_cxcywh: (K, 4) their GT boxes.
        num_boxes: normaliser.

    Returns:
        Scalar loss.
    """
    # torchvision is imported here, not at the top: every task imports kdbench.losses, and
    # torchvision.ops costs about 2 s and 170 MiB that only detection needs
    from torchvision.ops import box_convert, generalized_box_iou

    pred = box_convert(pred_cxcywh, "cxcywh", "xyxy")
    gt = box_convert(gt_cxcywh.detach(), "cxcywh", "xyxy")
    return (1.0 - generalized_box_iou(pred, gt).diagonal()).sum() / num_boxes


__all__ = ["box_giou", "box_l1", "fgl", "varifocal"]
