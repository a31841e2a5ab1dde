"""Sequence-model losses: fairseq's label-smoothed cross-entropy over target tokens, and FIRST's
top-k token distillation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench.losses._common import hard_target, mean_valid


def label_smoothed_nll(
    logits: Tensor, target: Tensor, epsilon: float = 0.1, mask: Tensor | None = None
) -> Tensor:
    """Label-smoothed cross-entropy with fairseq's convention, mean over valid tokens.

    Szegedy et al., "Rethinking the Inception Architecture for Computer Vision", CVPR 2016, in
    the form of fairseq's `label_smoothed_nll_loss` (criterions/label_smoothed_cross_entropy.py):
    with ε_i = ε/(V−1), per token

        L = (1 − ε − ε_i)·(−log p_y) + ε_i·Σ_k (−log p_k),

    i.e. the cross-entropy to a target that puts 1 − ε on the gold token and ε/(V−1) on each of
    the V−1 others (not ε/V everywhere as `kdbench.losses.label_smoothing`). fairseq sums over
    tokens and divides by the token count (sentence_avg off); this is that mean over the valid
    (non-padding) tokens. ε = 0 gives the plain cross-entropy.

    Args:
        logits: (..., V) token logits.
        target: (...) token indices (padding positions may hold anything).
        epsilon: ε.
        mask: (...) bool, True at real target tokens; None means all valid.

    Returns:
        Scalar loss.
    """
    log_p = F.log_softmax(logits if logits.dtype == torch.float64 else logits.float(), dim=-1)
    index = hard_target(target, logits, mask)
    nll = -log_p.gather(-1, index.unsqueeze(-1)).squeeze(-1)
    if epsilon == 0:
        return mean_valid(nll, mask)
    eps_i = epsilon / (logits.shape[-1] - 1)
    smooth = -log_p.sum(dim=-1)
    return mean_valid((1.0 - epsilon - eps_i) * nll + eps_i * smooth, mask)


def first_topk_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    k: int = 5,
    temperature: float = 1.0,
    epsilon: float = 1e-6,
    mask: Tensor | None = None,
) -> Tensor:
    """FIRST's top-k distillation: forward KL between the two models' renormalised top-k slices.

    Shum et al., "FIRST: Teach A Reliable Large Language Model Through Efficient Trustworthy
    Distillation", EMNLP 2024. Per token position, with I the ids of the teacher's k most probable
    tokens (softmax at T = 1), p_T and p_S the full softmaxes of the two models,

        q_i = p_T,i^(1/τ) / Σ_{j∈I} p_T,j^(1/τ)               (τ: the calibration temperature)
        t_i = (q_i + ε) / Σ_{j∈I} (q_j + ε),   s_i = (p_S,i + ε) / Σ_{j∈I} (p_S,j + ε)   (i ∈ I)
        ℓ = Σ_{i∈I} t_i (log t_i − log s_i)

    and L = Σ_valid positions ℓ / B, B the size of the first (sequence) dimension: summed over a
    sequence's tokens and averaged over sequences, no T² factor. This is the official code's
    `forward_kl_text2text` with `use_norm linear` (SHUMKASHUN/FIRST at 3252484, distill.py: the
    student softmax gathered at the teacher's top-5 ids, `(p + norm_epsilon) / sum`, `kl_div(...,
    reduction="sum", log_target=True)` over a sequence's loss-masked tokens, divided by the batch
    size). The teacher's top-5 come from its log-softmax at T = 1 (data_processing/generate.py).
    τ is the paper's "trustworthy maximization" (temperature scaling of the teacher's top-k, fitted
    for calibration); the released code never applies one, so τ = 1 is that code.

    Args:
        student_logits: (B, ..., V) student token logits.
        teacher_logits: (B, ..., V) teacher token logits (detached here); a top-k cache's logits
            are exact for this loss whenever the cache keeps at least k tokens.
        k: how many of the teacher's tokens are kept.
        temperature: τ.
        epsilon: ε.
        mask: (B, ...) bool, True at real target tokens; None means all valid.

    Returns:
        Scalar loss.
    """
    if not 1 <= k <= student_logits.shape[-1]:
        raise ValueError(f"k must be between 1 and the vocabulary size {student_logits.shape[-1]}, got {k}")
    dtype = torch.float64 if student_logits.dtype == torch.float64 else torch.float32
    log_p_teacher = F.log_softmax(teacher_logits.detach().to(dtype), dim=-1)
    top, ids = log_p_teacher.topk(k, dim=-1)
    q = torch.softmax(top / temperature, dim=-1)
    p_student = torch.softmax(student_logits.to(dtype), dim=-1).gather(-1, ids)
    t = (q + epsilon) / (q + epsilon).sum(dim=-1, keepdim=True)
    s = (p_student + epsilon) / (p_student + epsilon).sum(dim=-1, keepdim=True)
    per = (t * (t.log() - s.log())).sum(dim=-1)
    if mask is not None:
        per = per * mask.to(per.dtype)
    return per.sum() / student_logits.shape[0]


__all__ = ["first_topk_kl", "label_smoothed_nll"]
