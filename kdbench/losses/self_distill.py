"""Target-refining losses without an external teacher: soft CE, label smoothing, PS-KD, USKD,
EMA self-distillation (DeGLA) and self-distillation with weighted ground-truth targets (GTSD).

Distribution on the last dimension, any leading position dimensions; `mask` (bool, the
leading shape) selects the averaged positions (summed ones in `emasd`). Soft targets and the
EMA teacher's outputs are detached inside.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench.losses._common import drop_classes, expand_prefix, hard_target, mean_valid

_USKD_WEAK_SMOOTHING = 0.1  # label smoothing of USKD's weak-logit CE (official code)
_USKD_EPS = 1e-6  # added to the rank denominators 1 − w_t and 1 − s_t (official code)


def _one_hot_or_soft(target: Tensor, logits: Tensor, mask: Tensor | None = None) -> Tensor:
    """(..., K) float target: a soft target as it is, or one-hot of class indices."""
    if target.shape == logits.shape:
        return target.detach().to(logits.dtype)
    index = hard_target(target, logits, mask)
    return F.one_hot(index, logits.shape[-1]).to(logits.dtype)


def soft_cross_entropy(logits: Tensor, soft_targets: Tensor, mask: Tensor | None = None) -> Tensor:
    """Cross-entropy to a soft target distribution.

    Per position L = −Σ_k ỹ_k log σ(z)_k, summed over classes, averaged over valid
    positions. Not zero when the prediction equals the target: it is H(ỹ) + KL(ỹ ‖ σ(z)).
    The loss PS-KD trains with (Kim et al., ICCV 2021; official code
    lgcnsai/PS-KD-Pytorch, `Custom_CrossEntropy_PSKD`: −Σ ỹ log_softmax(z), batch mean).

    Args:
        logits: (..., K) predicted logits.
        soft_targets: (..., K) target distributions (detached here).
        mask: (...) bool, True at valid positions; None means all valid.

    Returns:
        Scalar loss.
    """
    per_position = -(soft_targets.detach() * F.log_softmax(logits, dim=-1)).sum(dim=-1)
    return mean_valid(per_position, mask)


def label_smoothing(
    logits: Tensor, target: Tensor, epsilon: float = 0.1, mask: Tensor | None = None
) -> Tensor:
    """Cross-entropy to label-smoothed targets, ε spread uniformly over all K classes.

    Szegedy, Vanhoucke, Ioffe, Shlens, Wojna, "Rethinking the Inception Architecture for
    Computer Vision", CVPR 2016. ỹ = (1 − ε)·onehot(y) + ε/K and L = −Σ_k ỹ_k log σ(z)_k,
    averaged over valid positions; identical to torch's `cross_entropy(label_smoothing=ε)`.
    (fairseq's translation criterion spreads ε over the K − 1 non-target tokens instead.)

    Args:
        logits: (..., K) predicted logits.
        target: (...) class indices, or a soft target (..., K) that replaces the one-hot.
        epsilon: smoothing mass ε.
        mask: (...) bool, True at valid positions; None means all valid.

    Returns:
        Scalar loss.
    """
    k = logits.shape[-1]
    smoothed = (1 - epsilon) * _one_hot_or_soft(target, logits, mask) + epsilon / k
    return soft_cross_entropy(logits, smoothed, mask)


def pskd_targets(target: Tensor, past_probs: Tensor, alpha: float | Tensor) -> Tensor:
    """PS-KD's progressively refined targets.

    Kim, Ji, Yoon, Hwang, "Self-Knowledge Distillation with Progressive Refinement of
    Targets", ICCV 2021. ỹ = (1 − α_t)·onehot(y) + α_t·p_{t−1}(x), with p_{t−1} the model's
    own (detached) prediction from the previous epoch and α_t = α_T·t/T set by the method.
    Train with `soft_cross_entropy(logits, ỹ)`.

    Args:
        target: (...) class indices, or a soft target (..., K) used in place of the one-hot.
        past_probs: (..., K) past predicted probabilities; K is taken from here.
        alpha: α_t in [0, 1].

    Returns:
        (..., K) detached target distributions (rows sum to 1 when past_probs' rows do).
    """
    past = past_probs.detach()
    if target.shape == past.shape:
        base = target.detach().to(past.dtype)
    else:
        base = F.one_hot(target.long(), past.shape[-1]).to(past.dtype)
    return ((1 - alpha) * base + alpha * past).detach()


def _uskd_zipf_labels(log_s: Tensor, weak_logits: Tensor, labels: Tensor, rank: str) -> Tensor:
    """(N, K − m) normalised Zipf labels over the non-target classes (no gradient)."""
    with torch.no_grad():
        w = F.softmax(weak_logits, dim=-1)
        w_t = w.gather(1, labels).sum(dim=1, keepdim=True)
        s = log_s if rank == "official" else log_s.exp()
        s_t = s.gather(1, labels).sum(dim=1, keepdim=True)
        score = w / (1 - w_t + _USKD_EPS) + s / (1 - s_t + _USKD_EPS)
        order = torch.argsort(score, dim=1, descending=True, stable=True)
        position = torch.argsort(order, dim=1)  # 0-based rank of every class
        zipf = 1.0 / (position + 1).to(log_s.dtype)
        drop = torch.zeros_like(zipf, dtype=torch.bool).scatter_(1, labels, True)
        non_target = drop_classes(zipf, drop)
        return non_target / non_target.sum(dim=1, keepdim=True)


def uskd_terms(
    student_logits: Tensor,
    weak_logits: Tensor,
    target: Tensor,
    alpha: float = 0.1,
    beta: float = 0.1,
    mu: float = 0.1,
    rank: Literal["official", "paper"] = "official",
) -> dict[str, Tensor]:
    """USKD's three loss terms, unweighted (`alpha`, `beta`, `mu` are only used by `uskd`).

    Yang, Zeng, Li, Zhang, Yuan, Li, "From Knowledge Distillation to Self-Knowledge
    Distillation: A Unified Approach with Normalized Loss and Customized Soft Labels",
    ICCV 2023; official code yzd-v/cls_KD, mmcls/models/dis_losses/uskd.py (`USKDLoss`).
    All leading dims are flattened into one batch of N positions; S = σ(z_S), w = σ(z_weak).

    - target: p̃_t = sg(S_t² + 1 − mean_batch(S_t²)), L_t = −(1/N)Σ p̃_t log S_t.
    - weak: L_weak = CE(z_weak, ỹ) with ỹ = 0.9·onehot + 0.1/K (label smoothing 0.1), batch
      mean; `uskd` multiplies it by μ (the official code folds μ inside).
    - non_target: score r_i = w_i/(1 − w_t + 1e-6) + s_i/(1 − s_t + 1e-6) for every class,
      the target included; classes sorted by descending r, rank k (1-based) gets 1/k; the
      target is dropped and the rest renormalised → z; L_non = −(1/N)Σ Σ_{i≠t} z_i log Ŝ_i,
      Ŝ the softmax over the non-target student logits. z carries no gradient.

    Ranking: the official code reuses the variable holding S for log σ(z_S) before the
    ranking, so s_i and s_t there are LOG-probabilities of the student (w stays a
    probability); rank="official" (default) reproduces that, rank="paper" uses the
    probabilities S_i, S_t as the paper's formula reads. Soft targets (mixup/cutmix, shape
    (..., K)) follow the official code too: the two largest target entries (v_1, v_2) are both
    "targets": p̃_j = S_{l_j}² + v_j − mean_batch(S_{l_j}²) (0 where v_j = 0), summed over j;
    w_t and s_t are sums over both; both are dropped from the Zipf labels; the weak target
    is 0.9·y + 0.1/K.

    Args:
        student_logits: (..., K) final student logits.
        weak_logits: (..., K) logits of the weak (mid-level) classifier.
        target: (...) class indices, or a soft target (..., K).
        alpha: weight of L_t (unused here).
        beta: weight of L_non (unused here).
        mu: weight of L_weak (unused here).
        rank: "official" (log-probabilities for s) or "paper" (probabilities).

    Returns:
        {"target": L_t, "non_target": L_non, "weak": L_weak}, scalars.
    """
    if rank not in ("official", "paper"):
        raise ValueError(f"rank must be 'official' or 'paper', got {rank!r}")
    k = student_logits.shape[-1]
    logits = student_logits.reshape(-1, k)
    weak = weak_logits.reshape(-1, k)
    if target.shape == student_logits.shape:
        soft = target.detach().reshape(-1, k).to(logits.dtype)
        values, labels = soft.topk(2, dim=1)
        weak_target = (1 - _USKD_WEAK_SMOOTHING) * soft + _USKD_WEAK_SMOOTHING / k
    else:
        labels = target.reshape(-1, 1).long()
        values = torch.ones_like(labels, dtype=logits.dtype)
        one_hot = F.one_hot(labels.squeeze(1), k).to(logits.dtype)
        weak_target = (1 - _USKD_WEAK_SMOOTHING) * one_hot + _USKD_WEAK_SMOOTHING / k

    log_s = F.log_softmax(logits, dim=1)
    log_s_t = log_s.gather(1, labels)  # (N, m), m = 1 (hard) or 2 (soft)
    s_t_sq = log_s_t.detach().exp() ** 2
    p_t = s_t_sq + values - s_t_sq.mean(dim=0, keepdim=True)
    p_t = torch.where(values == 0, torch.zeros_like(p_t), p_t)
    loss_target = -(p_t * log_s_t).sum(dim=1).mean()

    loss_weak = -(weak_target * F.log_softmax(weak, dim=1)).sum(dim=1).mean()

    zipf = _uskd_zipf_labels(log_s.detach(), weak.detach(), labels, rank)
    drop = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, labels, True)
    log_s_non = F.log_softmax(drop_classes(logits, drop), dim=1)
    loss_non = -(zipf * log_s_non).sum(dim=1).mean()
    return {"target": loss_target, "non_target": loss_non, "weak": loss_weak}


def uskd(
    student_logits: Tensor,
    weak_logits: Tensor,
    target: Tensor,
    alpha: float = 0.1,
    beta: float = 0.1,
    mu: float = 0.1,
    rank: Literal["official", "paper"] = "official",
) -> Tensor:
    """USKD: α·L_t + β·L_non + μ·L_weak (the CE on the hard labels is added by the method).

    Yang et al., ICCV 2023 (see `uskd_terms` for the terms, the official code's conventions
    and the `rank` option). Defaults are the CIFAR ones (all 0.1); ImageNet uses α 1,
    β 0.1, μ 0.005.

    Args:
        student_logits: (..., K) final student logits.
        weak_logits: (..., K) logits of the weak (mid-level) classifier.
        target: (...) class indices, or a soft target (..., K).
        alpha: weight α of the target term.
        beta: weight β of the Zipf non-target term.
        mu: weight μ of the weak-logit CE.
        rank: "official" (log-probabilities for s) or "paper" (probabilities).

    Returns:
        Scalar loss.
    """
    terms = uskd_terms(student_logits, weak_logits, target, alpha, beta, mu, rank)
    return alpha * terms["target"] + beta * terms["non_target"] + mu * terms["weak"]


def emasd(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None = None) -> Tensor:
    """DeGLA's self-distillation term: the squared error to the EMA teacher's outputs, summed.

    Hu, Yang, Wang, Xu, Feng, Wang, "Decoupled Global-Local Alignment for Improving
    Compositional Understanding", ACM MM 2025 (official code xiaoxing2001/DeGLA,
    src/open_clip/loss.py `CLIPloss_DeGLA.get_mse_distill_loss`: `F.mse_loss(reduction="sum")`
    between the student's and the EMA teacher's outputs):

        L = Σ_{valid positions} Σ_k (z_S,k − sg(z_T,k))²

    summed, not averaged, over positions as well as over the last dimension (DeGLA sums over the
    batch and the embedding dimension); zero where student and teacher agree. The weight is the
    method's. Computed in float32 at least (a bf16 sum of many squares loses its digits).

    Args:
        student_logits: (..., K) the student's outputs.
        teacher_logits: (..., K) the EMA teacher's outputs (detached here).
        mask: (...) bool, True at valid positions, a prefix of the leading shape; None: all valid.

    Returns:
        Scalar loss.
    """
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    squared = (student_logits.to(dtype) - teacher_logits.detach().to(dtype)) ** 2
    if mask is not None:
        valid = expand_prefix(mask.bool(), squared.shape)
        squared = torch.where(valid, squared, torch.zeros_like(squared))
    return squared.sum()


def probability_squared_error(logits: Tensor, target_probs: Tensor, mask: Tensor | None = None,
                              weight: Tensor | None = None) -> Tensor:
    """Squared error between the predicted distribution σ(z) and a target distribution q.

    Per position e = (1/K)·Σ_k (σ(z)_k − sg(q)_k)², times the position's weight w where given,
    averaged over the valid positions: L = mean_valid(w·e). Without mask and weight this is
    `F.mse_loss(F.softmax(z, dim=1), q)` (the mean over every element), the reduction of both
    terms of Borup & Andersen's official loss (`gtsd`). Zero exactly where σ(z) = q.

    Args:
        logits: (..., K) predicted logits.
        target_probs: (..., K) target distributions (detached here).
        mask: (...) bool, True at valid positions, a prefix of the leading shape; None: all valid.
        weight: per-position weights, a prefix of the leading shape (pose's keypoint visibility);
            None: 1.

    Returns:
        Scalar loss.
    """
    p = F.softmax(logits, dim=-1)
    per_position = ((p - target_probs.detach().to(p.dtype)) ** 2).mean(dim=-1)
    if weight is not None:
        per_position = per_position * expand_prefix(weight.to(p.dtype), per_position.shape)
    return mean_valid(per_position, mask)


def gtsd(logits: Tensor, target: Tensor, teacher_logits: Tensor | None, alpha: float,
         mask: Tensor | None = None, weight: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """Self-distillation with weighted ground-truth targets: the two terms of one generation.

    Borup & Andersen, "Even your Teacher Needs Guidance: Ground-Truth Targets Dampen
    Regularization Imposed by Self-Distillation", NeurIPS 2021 (arXiv 2102.13088); official code
    Kennethborup/self_distillation, `self_distiller.py` `LitResnet.training_step`. With y the
    one-hot of the target class (or the target distribution itself, for heads whose target has
    the logits' shape), SE = `probability_squared_error` and z_T the previous generation's logits:

        L_labels  = SE(σ(z), y)
        L_teacher = SE(σ(z), σ(sg(z_T)))                  (no temperature)
        L = α·L_labels + (1 − α)·L_teacher                 (generation k ≥ 1)
        L = L_labels                                        (generation 0: no teacher, weight 1)

    α weighs the ground truth (α = 1: labels only; α = 0: the teacher only, Mobahi et al.'s
    self-distillation). Per element α(p − y)² + (1 − α)(p − q)² = (p − (α·y + (1 − α)·q))² +
    α(1 − α)(y − q)², so the sum is the squared loss towards the α-mixture of labels and teacher,
    the paper's weighted target, plus a term the student does not change.

    Args:
        logits: (..., K) the student's logits.
        target: (...) class indices, or (..., K) a target distribution used in place of the one-hot.
        teacher_logits: (..., K) the previous generation's logits (detached here), or None.
        alpha: α, the weight of the ground truth, in [0, 1].
        mask: (...) bool, True at valid positions; None: all valid.
        weight: per-position weights (a prefix of the leading shape); None: 1.

    Returns:
        (α·L_labels, (1 − α)·L_teacher), or (L_labels, None) without a teacher.
    """
    labels = probability_squared_error(logits, _one_hot_or_soft(target, logits, mask), mask, weight)
    if teacher_logits is None:
        return labels, None
    teacher = probability_squared_error(logits, F.softmax(teacher_logits.detach(), dim=-1), mask, weight)
    return alpha * labels, (1 - alpha) * teacher


__all__ = ["emasd", "gtsd", "label_smoothing", "probability_squared_error", "pskd_targets", "soft_cross_entropy",
           "uskd", "uskd_terms"]
