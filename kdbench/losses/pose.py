"""SimCC losses: RTMPose's KL task loss and DWPose's logit and feature distillation.

SimCC logits are (B, K, W): per sample and keypoint a distribution over W coordinate bins
(one tensor per axis). These follow their official code's reductions, which differ from the
library's default mean over positions; each docstring says how.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdbench.losses._common import kl_log
from kdbench.losses.feature import feature_mse


def simcc_kl(logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """RTMPose's SimCC loss for one axis (mmpose `KLDiscretLoss`, use_target_weight=True).

    Jiang et al., "RTMPose: Real-Time Multi-Person Pose Estimation based on MMPose", 2023; Li et
    al., "SimCC", ECCV 2022. With q the label distribution (mmpose's label_softmax:
    q = σ(β_label·g), g the Gaussian target) and p = σ(logits) (RTMPose: logits = β·z, β 10),

        L = (1/K) · Σ_b Σ_k w_bk · (1/W) Σ_i q_bki (log q_bki − log p_bki),

    i.e. the elementwise KL averaged over the W bins, weighted per keypoint, SUMMED over the
    batch (not averaged) and divided by K, as mmpose computes it. The full loss adds the x
    and y axes.

    Args:
        logits: (B, K, W) the predicted distribution's logits.
        target: (B, K, W) the label distribution q (rows sum to 1).
        weight: (B, K) keypoint weights (visibility); None means 1.

    Returns:
        Scalar loss.
    """
    per_keypoint = kl_log(target.clamp_min(0).log(), F.log_softmax(logits, -1)) / logits.shape[-1]  # (B, K)
    if weight is not None:
        per_keypoint = per_keypoint * weight
    return per_keypoint.sum() / logits.shape[1]


def dwpose_logit(student_logits: Tensor, teacher_logits: Tensor, beta: float = 1.0) -> Tensor:
    """DWPose's logit distillation for one SimCC axis, before its weight w.

    Yang, Zeng, Yuan, Li, "Effective Whole-body Pose Estimation with Two-stages Distillation",
    ICCV 2023 Workshops (official code IDEA-Research/DWPose, `KDLoss`):

        L = (1/K) · (1/B) Σ_b Σ_k KL(σ(β·z^T_bk) ‖ σ(β·z^S_bk)),

    summed over bins, over keypoints, averaged over the batch, divided by K; every keypoint
    counts (visibility ignored) and there is no T² factor. Also open-mmlab/mmpose at 1c314be,
    `mmpose/models/losses/logit_dis_loss.py`: `KDLoss.loss` (sum over bins, `.reshape(N, K)
    .sum(dim=1).mean()`, × weight) per axis, `KDLoss.forward` adds the axes and divides by
    `num_joints`; the `target_weight` it receives is unused. Against `simcc_kl` (mean over
    bins, sum over the batch) the weighted term therefore weighs w·W/B, there as here.
    The official β is RTMPose's loss
    β = 10 on raw logits z (the code passes the head loss's β); for logits that already are
    β·z, β here is 1.

    Args:
        student_logits: (B, K, W).
        teacher_logits: (B, K, W) (detached here).
        beta: scale of both logits before the softmax.

    Returns:
        Scalar loss.
    """
    log_t = F.log_softmax(teacher_logits.detach() * beta, -1)
    log_s = F.log_softmax(student_logits * beta, -1)
    b, k = student_logits.shape[:2]
    return kl_log(log_t, log_s).sum() / (b * k)


def dwpose_feature(student_features: Tensor, teacher_features: Tensor, alpha: float = 7e-5) -> Tensor:
    """DWPose's feature distillation: α·‖F_S − F_T‖²_sum / B (official `FeaLoss`, α_fea 7e-5).

    Yang et al., ICCV 2023 Workshops; also mmpose `mmpose/models/losses/fea_dis_loss.py`
    `FeaLoss.get_dis_loss`: `MSELoss(reduction='sum')(S, T) / N * alpha_fea`, N = batch.
    F_S is the student's last backbone stage already mapped
    to the teacher's channels (a 1×1 convolution when they differ, which the method owns).

    Args:
        student_features: (B, C, H, W) aligned student features.
        teacher_features: (B, C, H, W) (detached here).
        alpha: α_fea.
    """
    return alpha * feature_mse(student_features, teacher_features, reduction="sum")


__all__ = ["dwpose_feature", "dwpose_logit", "simcc_kl"]
