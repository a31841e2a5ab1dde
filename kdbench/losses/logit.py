"""Logit distillation losses with an external teacher: KD (and its per-class binary form), DKD,
NKD, TAID.

All functions take logits with the class distribution on the last dimension and any number
of leading position dimensions; `mask` (bool, the leading shape, True = valid) selects the
positions that are averaged. Teacher logits are detached inside every loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench.losses._common import drop_classes, hard_target, kl_log, mean_valid, target_mask

# mdistiller's dkd_loss removes the target class from the non-target softmax this way.
_DKD_TARGET_OFFSET = 1000.0


def kd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 4.0,
    mask: Tensor | None = None,
) -> Tensor:
    """Hinton knowledge distillation: temperature-scaled KL from teacher to student.

    Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", NIPS Deep
    Learning Workshop 2015. Per position

        L = T² · KL(σ(z_T/T) ‖ σ(z_S/T)) = T² · Σ_k p_T,k (log p_T,k − log p_S,k),

    summed over classes and averaged over valid positions, as mdistiller's `kd_loss`
    (`kl_div(...).sum(1).mean() * T**2`).

    Args:
        student_logits: (..., K) student logits.
        teacher_logits: (..., K) teacher logits (detached here).
        temperature: softmax temperature T.
        mask: (...) bool, True at valid positions; None means all valid.

    Returns:
        Scalar loss.
    """
    t = temperature
    log_p_teacher = F.log_softmax(teacher_logits.detach() / t, dim=-1)
    log_p_student = F.log_softmax(student_logits / t, dim=-1)
    return mean_valid(kl_log(log_p_teacher, log_p_student) * t**2, mask)


def binary_kd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    beta: float = 1.0,
    mask: Tensor | None = None,
) -> Tensor:
    """Binary-classification distillation: KD for heads with an independent sigmoid per class.

    Yang et al., "Bridging Cross-task Protocol Inconsistency for Distillation in
    Dense Object Detection" (BCKD), ICCV 2023: a sigmoid detector's class scores are C binary
    classifiers, so each is distilled as one, not through a softmax over classes. Follows the
    official `novel_kd_loss` (TinyTigerPan/BCKD at 851f5b4, mmdet/models/losses/kd_loss.py,
    lines 11-38): with p_S = σ(z_S), p_T = sg(σ(z_T)), per position

        L = Σ_c BCE(z_S,c; p_T,c) · |p_T,c − p_S,c|^β
          = Σ_c −[p_T,c log p_S,c + (1 − p_T,c) log(1 − p_S,c)] · |p_T,c − p_S,c|^β,

    summed over classes (`kd_loss.sum(dim=1)`), the modulating factor not detached (as there),
    no temperature; averaged over valid positions (the official divides the sum over anchors by
    the number of positive anchors). β = 1 is the official default (`NovelKDLoss.forward`;
    configs/bckd/*.py leave it).

    Args:
        student_logits: (..., C) student sigmoid logits.
        teacher_logits: (..., C) teacher sigmoid logits (detached here).
        beta: exponent β of the modulating factor.
        mask: (...) bool, True at valid positions; None means all valid.

    Returns:
        Scalar loss.
    """
    p_teacher = torch.sigmoid(teacher_logits.detach().to(student_logits.dtype))
    bce = F.binary_cross_entropy_with_logits(student_logits, p_teacher, reduction="none")
    scale = (p_teacher - torch.sigmoid(student_logits)).abs().pow(beta)
    return mean_valid((bce * scale).sum(dim=-1), mask)


def _binary_log_split(log_probs: Tensor, is_target: Tensor) -> Tensor:
    """(..., 2) log-probabilities of (target, not target) from (..., K) log-probabilities."""
    neg_inf = torch.full_like(log_probs, float("-inf"))
    log_target = torch.where(is_target, log_probs, neg_inf).logsumexp(dim=-1)
    log_other = torch.where(is_target, neg_inf, log_probs).logsumexp(dim=-1)
    return torch.stack([log_target, log_other], dim=-1)


def dkd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
    mask: Tensor | None = None,
) -> Tensor:
    """Decoupled knowledge distillation: α·TCKD + β·NCKD.

    Zhao, Cui, Song, Qiu, Liang, "Decoupled Knowledge Distillation", CVPR 2022. With
    p = σ(z/T), t the target class, b = (p_t, 1 − p_t) the binary target/non-target split and
    p̂ = σ(z/T − 1000·onehot(t)) the softmax with the target logit masked out, per position

        TCKD = T² · KL(b_T ‖ b_S),   NCKD = T² · KL(p̂_T ‖ p̂_S),   L = α·TCKD + β·NCKD,

    averaged over valid positions. Follows mdistiller's `dkd_loss` (the −1000 offset is
    applied after dividing by T; KL summed over classes, divided by the batch size). The
    warm-up factor min(epoch/20, 1) of the original (epochs counted from 1) is the method's business, not included.
    The binary log-probabilities are computed by logsumexp instead of log(Σ p): same value,
    no log(0). A teacher with no probability outside the target (possible only with −∞ teacher
    logits, e.g. a distribution re-expressed on another model's bins, `Head.in_frame`) has no
    non-target distribution to transfer: NCKD is 0 there (the −1000 offset would otherwise make
    the target itself p̂_T's only class and NCKD ≈ 1000); finite teacher logits never meet it.

    Args:
        student_logits: (..., K) student logits.
        teacher_logits: (..., K) teacher logits (detached here).
        target: (...) class indices, or a soft target (..., K) (its argmax is used).
        alpha: weight of TCKD.
        beta: weight of NCKD.
        temperature: softmax temperature T.
        mask: (...) bool, True at valid positions; None means all valid.

    Returns:
        Scalar loss.
    """
    t = temperature
    is_target = target_mask(student_logits, hard_target(target, student_logits, mask))
    s = student_logits / t
    z = teacher_logits.detach() / t
    split_teacher = _binary_log_split(F.log_softmax(z, dim=-1), is_target)
    tckd = kl_log(split_teacher, _binary_log_split(F.log_softmax(s, dim=-1), is_target))
    offset = is_target.to(s.dtype) * _DKD_TARGET_OFFSET
    nckd = kl_log(F.log_softmax(z - offset, dim=-1), F.log_softmax(s - offset, dim=-1))
    nckd = torch.where(torch.isneginf(split_teacher[..., 1]), torch.zeros_like(nckd), nckd)  # no non-target mass
    return mean_valid((alpha * tckd + beta * nckd) * t**2, mask)


def nkd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    temperature: float = 1.0,
    gamma: float = 1.5,
    mask: Tensor | None = None,
) -> Tensor:
    """Normalized KD: the term NKD adds to the cross-entropy (which is not included here).

    Yang, Zeng, Li, Zhang, Yuan, Li, "From Knowledge Distillation to Self-Knowledge
    Distillation: A Unified Approach with Normalized Loss and Customized Soft Labels",
    ICCV 2023. With S, T the temperature-1 softmaxes of student and teacher, t the target, and
    Ŝ, T̂ the softmaxes over the non-target logits only, each divided by λ = `temperature`,

        L = −sg(T_t)·log S_t − γ·λ²·Σ_{i≠t} T̂_i log Ŝ_i,

    averaged over valid positions. Follows the official cls_KD `NKDLoss` (yzd-v/cls_KD,
    mmcls/models/dis_losses/nkd.py, which drops the target from the non-target logits as
    here; one revision of mmcls/distillation/losses/nkd.py kept it, by a scatter value of
    1). A soft target (mixup) uses its argmax, as the official code does.

    Args:
        student_logits: (..., K) student logits.
        teacher_logits: (..., K) teacher logits (detached here).
        target: (...) class indices, or a soft target (..., K).
        temperature: λ, the temperature of the non-target softmaxes.
        gamma: γ, weight of the non-target term.
        mask: (...) bool, True at valid positions; None means all valid.

    Returns:
        Scalar loss.
    """
    lam = temperature
    index = hard_target(target, student_logits, mask)
    teacher = teacher_logits.detach()
    log_s_target = F.log_softmax(student_logits, dim=-1).gather(-1, index.unsqueeze(-1))
    t_target = F.softmax(teacher, dim=-1).gather(-1, index.unsqueeze(-1))
    loss_target = -(t_target * log_s_target).squeeze(-1)

    is_target = target_mask(student_logits, index)
    log_s_non = F.log_softmax(drop_classes(student_logits, is_target) / lam, dim=-1)
    t_non = F.softmax(drop_classes(teacher, is_target) / lam, dim=-1)
    loss_non = -gamma * lam**2 * (t_non * log_s_non).sum(dim=-1)
    return mean_valid(loss_target + loss_non, mask)


def taid(
    student_logits: Tensor,
    teacher_logits: Tensor,
    t: float | Tensor,
    mask: Tensor | None = None,
) -> Tensor:
    """TAID: cross-entropy to a distribution interpolated between student and teacher logits.

    Shing, Misaki, Bao, Yokoi, Akiba, "TAID: Temporally Adaptive Interpolated Distillation for
    Efficient Knowledge Transfer in Language Models", ICLR 2025. Per position

        p_t = σ((1 − t)·sg(z_S) + t·z_T),
        L = −Σ_{k: z_S,k finite} p_t,k log σ(z_S)_k,

    averaged over valid positions. Follows the official code (SakanaAI/TAID at a062892,
    src/distil_losses/taid.py `TAID.compute_loss` and src/distil_losses/fkl.py `forward_kl`):
    the interpolation is of LOGITS, not probabilities, the student's share is detached, and the
    term of every entry where the student's logit is infinite is set to 0 (`forward_kl` fills
    them by `isinf(logits)`), so a −∞ logit (a class masked out of the student's vocabulary)
    gives no 0·(−∞) NaN: the loss is then that over the finite classes. A share whose
    coefficient is 0 (the student's at t = 1, the teacher's at t = 0) contributes 0 even where
    its logits are infinite; the official product 0·(−∞) is NaN there. The schedule of t is the
    method's business.

    Args:
        student_logits: (..., K) student logits; −∞ entries are excluded.
        teacher_logits: (..., K) teacher logits (detached here).
        t: interpolation coefficient in [0, 1], a float or a 0-dim tensor.
        mask: (...) bool, True at valid positions; None means all valid.

    Returns:
        Scalar loss.
    """
    coef = torch.as_tensor(t, dtype=student_logits.dtype, device=student_logits.device).detach()
    student, teacher = student_logits.detach(), teacher_logits.detach()
    student_share = torch.where(coef < 1, (1 - coef) * student, torch.zeros_like(student))
    teacher_share = torch.where(coef > 0, coef * teacher, torch.zeros_like(teacher))
    p_mixed = F.softmax(student_share + teacher_share, dim=-1)
    terms = p_mixed * F.log_softmax(student_logits, dim=-1)
    terms = torch.where(torch.isinf(student_logits), torch.zeros_like(terms), terms)
    return mean_valid(-terms.sum(dim=-1), mask)


__all__ = ["binary_kd", "dkd", "kd", "nkd", "taid"]
