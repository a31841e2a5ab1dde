"""OFA-KD's loss (Hao, Guo, Han, Tang, Hu, Wang, Xu, "One-for-All: Bridge the Gap Between
Heterogeneous Architectures in Knowledge Distillation", NeurIPS 2023)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdbench.losses._common import hard_target, mean_valid, target_mask


def ofa(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    eps: float = 1.0,
    temperature: float = 1.0,
    mask: Tensor | None = None,
) -> Tensor:
    """The OFA loss: cross-entropy towards the teacher's distribution with its target class enhanced.

    With p_T = σ(z_T/T), p_S = σ(z_S/T), y the target class and 1_y its one-hot,

        w_c = (p_T,c + 1_y,c)^ε − 1_y,c
        L   = mean_valid(−Σ_c w_c·log p_S,c)
            = mean_valid(−((1 + p_T,y)^ε − 1)·log p_S,y − Σ_{c≠y} p_T,c^ε·log p_S,c),

    no T² factor. At ε = 1, w = p_T and L is the soft cross-entropy H(p_T, p_S) = KL(p_T ‖ p_S) +
    H(p_T): not zero where the two distributions agree, but minimal there (zero gradient). For any
    ε, the minimiser over p_S is w/Σw (Gibbs' inequality), so the gradient with respect to z_S
    is (Σw·p_S − w)/T and vanishes at p_S = w/Σw; ε > 1 moves that optimum's mass towards the
    target class the more confident the teacher is on it (the paper's adaptive target
    enhancement).

    Follows `ofa_loss` of the official code (Hao840/OFAKD at f7bb896, distillers/ofa.py, lines
    13-18): softmax of both models at `temperature` (default 1, `--ofa-temperature`), the
    coefficient (p_T + onehot)^ε − onehot summed over classes, a plain mean over the batch,
    no T². The paper's equation is quoted as −(1 + p_T,y)^ε·log p_S,y − Σ_{c≠y} p_T,c·log p_S,c
    (its text was not read for kdbench); the code, followed here, subtracts the one-hot inside
    the target coefficient and also raises the non-target probabilities to ε, so that at ε = 1
    it is exactly the soft cross-entropy of KD at T. Departures: log p_S is
    computed by `log_softmax` rather than the official `torch.log(softmax)` (the same value
    where the latter is finite; finite where the softmax underflows); a soft target uses its
    argmax, as the official code does under label smoothing or mixup.

    Args:
        student_logits: (..., K) student logits.
        teacher_logits: (..., K) teacher logits (detached here).
        target: (...) class indices, or a soft target (..., K).
        eps: ε, the target-enhancement exponent (> 0).
        temperature: T, applied to both models' logits.
        mask: (...) bool, True at valid positions; None means all valid.

    Returns:
        Scalar loss.
    """
    if eps <= 0:
        raise ValueError(f"ofa: eps must be > 0, got {eps}")
    index = hard_target(target, student_logits, mask)
    onehot = target_mask(student_logits, index).to(student_logits.dtype)
    p_t = F.softmax(teacher_logits.detach() / temperature, dim=-1)
    log_p_s = F.log_softmax(student_logits / temperature, dim=-1)
    weight = (p_t + onehot) ** eps - onehot
    return mean_valid(-(weight * log_p_s).sum(dim=-1), mask)
