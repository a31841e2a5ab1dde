"""Feature and relation losses: feature MSE (DWPose), ND (KD++), MLKD similarity, MiniLM.

Features are (..., D) with the leading dims as positions; `mask` (bool, a prefix of the
leading shape) selects the averaged positions. Teacher features are detached inside, except
in `similarity` (see there).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench.losses._common import expand_prefix, kl_log, mean_valid


def feature_mse(
    student_features: Tensor,
    teacher_features: Tensor,
    mask: Tensor | None = None,
    reduction: Literal["mean", "sum"] = "mean",
) -> Tensor:
    """Squared error between (already size-matched) student and teacher features.

    reduction "mean": the elementwise mean of (F_S − F_T)² over the elements of the valid
    positions. reduction "sum": DWPose's feature loss before its weight α_fea,
    ‖F_S − F_T‖²_sum / B with B = dim 0 (Yang, Zeng, Yuan, Li, "Effective Whole-body Pose
    Estimation with Two-stages Distillation", ICCV 2023 Workshops; official code
    IDEA-Research/DWPose, `FeaLoss`: MSELoss(reduction="sum") / N, also in mmpose). With a
    mask, "sum" adds the valid positions only and still divides by B.

    Args:
        student_features: (B, ...) student features, mapped to the teacher's shape.
        teacher_features: same shape (detached here).
        mask: bool, a prefix of the shape (e.g. (B,) or (B, T)), True at valid positions.
        reduction: "mean" or "sum".

    Returns:
        Scalar loss.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    squared = (student_features - teacher_features.detach()) ** 2
    if mask is None:
        count = squared.new_tensor(float(squared.numel()))
    else:
        valid = expand_prefix(mask.bool(), squared.shape)
        squared = torch.where(valid, squared, torch.zeros_like(squared))
        count = valid.sum().clamp_min(1).to(squared.dtype)
    if reduction == "sum":
        return squared.sum() / student_features.shape[0]
    return squared.sum() / count


def nd(
    student_features: Tensor,
    teacher_features: Tensor,
    class_means: Tensor,
    target: Tensor,
) -> Tensor:
    """KD++'s norm-and-direction (ND) loss, before its weight λ_ND.

    Wang, Cheng, Duan, Wang, Feng, Kong, "Improving Knowledge Distillation via Regularizing
    Feature Norm and Direction", arXiv:2305.17007, 2023. With c_y the teacher's class mean
    embedding of sample i's class and e = c_y/‖c_y‖,

        L_ND = (1/B) Σ_i [1 − ⟨f_S,i, e⟩ / max(‖f_S,i‖, ‖f_T,i‖)],

    as the official `DirectNormLoss` (WangYZ1608/Knowledge-Distillation-via-ND). It is ≥ 0
    and 0 when f_S points along c_y and is at least as long as f_T. Teacher features and
    class means are detached; the gradient reaches the student through both the dot
    product and, where it is the larger, its norm.

    Args:
        student_features: (B, D) student embeddings (mapped to the teacher's size).
        teacher_features: (B, D) teacher embeddings (detached here).
        class_means: (C, D) teacher class-mean embeddings (detached here).
        target: (B,) class indices (a soft target (B, C) uses its argmax).

    Returns:
        Scalar loss.
    """
    index = target.argmax(dim=-1) if target.ndim == 2 else target.long()
    centers = class_means.detach()[index]
    direction = centers / centers.norm(dim=-1, keepdim=True)
    longest = torch.maximum(student_features.norm(dim=-1), teacher_features.detach().norm(dim=-1))
    return (1 - (student_features * direction).sum(dim=-1) / longest).mean()


def similarity(
    student_features: Sequence[Tensor],
    teacher_features: Sequence[Tensor],
    weights: Tensor,
    nearest: int = 2,
    mask: Tensor | None = None,
    projection: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """MLKD's similarity-based intermediate-layer loss.

    Wu, Jiang, Yin, Karlsson, Lin, "Multi-Level Knowledge Distillation for Out-of-
    Distribution Detection in Text", ACL 2023; official code microsoft/KC,
    papers/MLKD_OOD/models/kd_clm.py (`train_KD_CLM`, loop_type "linear_tea_mse",
    intermediate_mode "middle"). Per position (token), for student layer i and teacher
    layer j, m_ij = mean_D (h_S,i − Linear(h_T,j))²; the selection is by MSE value, PER
    POSITION: the `nearest` smallest m_ij over j are kept, each times its weight, summed over
    kept pairs and student layers, then averaged over valid (non-pad) positions:

        L = mean_valid Σ_i Σ_{j ∈ nearest_i(position)} weights[i, j] · m_ij.

    Weights: the official code multiplies the kept values by a 2·L_s vector indexed by
    (student layer, rank slot), initialised to 1; as written (`nn.Parameter(...).to(device)`,
    a non-leaf copy assigned as a plain attribute) it is not among the optimised parameters
    and stays 1. Here weights[i, j] is per (student, teacher) pair as kdbench's contract
    says; initialised to 1 it gives the official value exactly.

    Gradient: the teacher features given here are normally the output of the caller's
    learnable Linear, which the official code trains through this loss, so they are NOT
    detached — pass the teacher's hidden states detached into that Linear, or pass them
    raw with `projection`, which detaches them first and then applies it.

    Args:
        student_features: L_s tensors (B, D) or (B, T, D).
        teacher_features: L_t tensors of the same shape (or raw, with `projection`).
        weights: (L_s, L_t) pair weights.
        nearest: how many teacher layers each student layer keeps per position.
        mask: (B,) or (B, T) bool, True at valid positions; None means all valid.
        projection: optional map applied to each detached teacher feature.

    Returns:
        Scalar loss.
    """
    n_student, n_teacher = len(student_features), len(teacher_features)
    if tuple(weights.shape) != (n_student, n_teacher):
        raise ValueError(
            f"weights has shape {tuple(weights.shape)}; expected ({n_student}, {n_teacher})"
        )
    if not 1 <= nearest <= n_teacher:
        raise ValueError(f"nearest must be in [1, {n_teacher}], got {nearest}")
    if projection is not None:
        teacher_features = [projection(t.detach()) for t in teacher_features]
    teachers = torch.stack(list(teacher_features), dim=-2)  # (..., L_t, D)
    total = weights.new_zeros(())
    for i, student in enumerate(student_features):
        mse = ((student.unsqueeze(-2) - teachers) ** 2).mean(dim=-1)  # (..., L_t)
        kept, index = mse.topk(nearest, dim=-1, largest=False)
        total = total + mean_valid((weights[i][index] * kept).sum(dim=-1), mask)
    return total


def _relation_log_probs(a: Tensor, b: Tensor, key_mask: Tensor | None) -> Tensor:
    """log σ(a bᵀ/√d) over keys, (B, A, T, T); padded keys get probability 0."""
    scores = a @ b.transpose(-1, -2) / math.sqrt(a.shape[-1])
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], torch.finfo(scores.dtype).min)
    return F.log_softmax(scores, dim=-1)


def _mean_per_sequence(values: Tensor, mask: Tensor | None) -> Tensor:
    """(B, T) per-query values → mean over sequences of each one's mean over its valid queries.

    Sequences without a valid query are left out; masked values are zeroed first, so whatever
    they hold cannot leak. With no mask (or equal lengths) this is the plain mean.
    """
    if mask is None:
        return values.mean(dim=-1).mean()
    valid = mask.bool()
    counts = valid.sum(dim=-1)
    sums = torch.where(valid, values, torch.zeros_like(values)).sum(dim=-1)
    per_sequence = sums / counts.clamp_min(1).to(values.dtype)
    present = counts > 0
    return per_sequence[present].sum() / present.sum().clamp_min(1).to(values.dtype)


def minilm_relations(
    student_qkv: tuple[Tensor, Tensor, Tensor],
    teacher_qkv: tuple[Tensor, Tensor, Tensor],
    mask: Tensor | None = None,
) -> Tensor:
    """MiniLM's self-attention distribution and value-relation transfer, L_AT + L_VR.

    Wang, Wei, Dong, Bao, Yang, Zhou, "MiniLM: Deep Self-Attention Distillation for
    Task-Agnostic Compression of Pre-Trained Transformers", NeurIPS 2020 (v1), L_AT and L_VR.
    With A = σ(QKᵀ/√d) and VR = σ(VVᵀ/√d), d each model's own head size, padded KEY positions
    masked out of the softmax, for one sequence x of |x| valid tokens

        L_AT(x) = 1/(A_h·|x|) Σ_a Σ_t KL(A^T_{a,t} ‖ A^S_{a,t}),   L_VR(x) likewise with VR,

    each normalised per sequence by its own heads and valid length, then averaged over the
    sequences of the batch (those with at least one valid token): a short sequence weighs as
    much as a long one. No official distillation code was released (microsoft/unilm holds only
    the checkpoints and fine-tuning scripts, minilm/README.md; its issues #105, #224 and #316
    ask for the code), so this follows the paper's per-sequence 1/(A_h·|x|); the authors'
    answer in microsoft/unilm issue #198 says both relations were computed with the attention
    mask applied, as the key masking here.

    Args:
        student_qkv: (q, k, v), each (B, A, T, d_S).
        teacher_qkv: (q, k, v), each (B, A, T, d_T) (detached here); same A and T.
        mask: (B, T) bool, True at real tokens; None means no padding.

    Returns:
        Scalar loss.
    """
    q_s, k_s, v_s = student_qkv
    q_t, k_t, v_t = (x.detach() for x in teacher_qkv)
    if q_s.shape[:3] != q_t.shape[:3]:
        raise ValueError(
            f"student (B, A, T) = {tuple(q_s.shape[:3])} differs from teacher's "
            f"{tuple(q_t.shape[:3])}; MiniLM needs equal head counts"
        )
    key_mask = None if mask is None else mask.bool()
    loss = q_s.new_zeros(())
    for (a_s, b_s), (a_t, b_t) in (((q_s, k_s), (q_t, k_t)), ((v_s, v_s), (v_t, v_t))):
        log_teacher = _relation_log_probs(a_t, b_t, key_mask)
        kl = kl_log(log_teacher, _relation_log_probs(a_s, b_s, key_mask))
        loss = loss + _mean_per_sequence(kl.mean(dim=1), key_mask)  # heads, queries, sequences
    return loss


__all__ = ["feature_mse", "minilm_relations", "nd", "similarity"]
