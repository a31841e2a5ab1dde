"""Alternative divergences between student and teacher logits: BD-KD (its student's balanced
divergence and its online teacher's reverse KL) and DHKD's BinaryKL-Norm.

Distribution on the last dimension, any leading position dimensions, `mask` (bool, the
leading shape) selects the averaged positions. The other model's logits are detached inside:
the teacher's in the student's losses, the student's in `bdkd_teacher`, the one loss here that
trains a teacher (BD-KD's online teacher).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench.losses._common import entropy_log, kl_log, mean_valid

# DHKD's BinaryKLNorm clamps sigmoid((z_S − z_T)/T) to [eps, 1 − eps] with this eps.
_DHKD_EPS = 1e-8


def bdkd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 4.0,
    mask: Tensor | None = None,
) -> Tensor:
    """BD-KD's student loss: forward and reverse KL, balanced per position by the entropy gap.

    The student's side of both kdbench variants: `bdkd` (offline, the card's frozen teacher) and
    `bdkd_online` (the teacher trained beside the student, by `bdkd_teacher` and its task loss).

    Amara, Sepahvand, Meyer, Gross, Clark, "BD-KD: Balancing the Divergences for Online
    Knowledge Distillation", arXiv:2212.12965, 2022. No official code was found; this is
    kdbench's reading of the paper's rule. With p_S = σ(z_S/T), p_T = σ(z_T/T), H the entropy,

        g = sg(H(p_S) − H(p_T)),  w_rev = 2·sigmoid(g),  w_fwd = 2·(1 − sigmoid(g)),
        L = T² · [w_fwd · KL(p_T ‖ p_S) + w_rev · KL(p_S ‖ p_T)],

    averaged over valid positions. A student less confident than its teacher (g > 0) puts
    more weight on the mode-seeking reverse KL; at equal entropy both weigh 1 (w_fwd + w_rev
    is always 2), so the loss then equals the symmetric T²·(KL_fwd + KL_rev).

    Args:
        student_logits: (..., K) student logits.
        teacher_logits: (..., K) teacher logits (detached here).
        temperature: softmax temperature T of both distributions and of the entropies.
        mask: (...) bool, True at valid positions; None means all valid.

    Returns:
        Scalar loss.
    """
    t = temperature
    log_p_student = F.log_softmax(student_logits / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.detach() / t, dim=-1)
    gap = (entropy_log(log_p_student) - entropy_log(log_p_teacher)).detach()
    w_rev = 2 * torch.sigmoid(gap)
    w_fwd = 2 - w_rev
    forward = kl_log(log_p_teacher, log_p_student)
    reverse = kl_log(log_p_student, log_p_teacher)
    return mean_valid(t**2 * (w_fwd * forward + w_rev * reverse), mask)


def bdkd_teacher(
    teacher_logits: Tensor,
    student_logits: Tensor,
    temperature: float = 4.0,
    mask: Tensor | None = None,
) -> Tensor:
    """BD-KD's online-teacher regulariser: the reverse KL, trained into the teacher.

    Amara, Sepahvand, Meyer, Gross, Clark, arXiv:2212.12965 (BD-KD). In online KD the teacher
    trains beside the student; BD-KD regularises the teacher's objective with the reverse KL
    (kdbench's reading, `kdbench.methods.bdkd_online` says what was read). With
    p_S = σ(z_S/T), p_T = σ(z_T/T),

        L = T² · KL(sg(p_S) ‖ p_T)      averaged over valid positions,

    the reverse KL of `bdkd` (the student's distribution first), here differentiated with
    respect to the teacher only: the student's logits are detached, so this term never trains
    the student (∂L/∂z_T = T·(p_T − p_S) per position). It is zero where the two
    distributions agree.

    Args:
        teacher_logits: (..., K) logits of the online teacher, with their graph.
        student_logits: (..., K) student logits (detached here).
        temperature: softmax temperature T of both distributions.
        mask: (...) bool, True at valid positions; None means all valid.

    Returns:
        Scalar loss.
    """
    t = temperature
    log_p_student = F.log_softmax(student_logits.detach() / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits / t, dim=-1)
    return mean_valid(t**2 * kl_log(log_p_student, log_p_teacher), mask)


def binary_kl_norm(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 2.0,
    mask: Tensor | None = None,
) -> Tensor:
    """DHKD's BinaryKL-Norm: per-class Bernoulli KL on the logit difference.

    Yang, Zong, Huang, Feng, An, "Dual-Head Knowledge Distillation: Enhancing Logits
    Utilization with an Auxiliary Head", KDD 2025 (arXiv:2411.08937, 2024). With
    d_c = sigmoid((z_S,c − z_T,c)/T), per position

        L = T² · Σ_c KL(Bern(0.5) ‖ Bern(d_c))
          = T² · Σ_c [0.5·log(0.5/d_c) + 0.5·log(0.5/(1 − d_c))],

    averaged over valid positions. Matches the official code (penghui-yang/DHKD,
    distiller_zoo/BinaryKLNorm.py): KLDivLoss terms summed over all entries, divided by the
    batch size, times T², with d clamped to [1e-8, 1 − 1e-8]. The clamp is kept (on the
    log-probabilities, an equivalent form), so the loss saturates, with zero gradient, where
    |z_S − z_T|/T exceeds about 18.4. It is zero when the logits agree.

    Args:
        student_logits: (..., K) logits of the auxiliary (distillation) head.
        teacher_logits: (..., K) teacher logits (detached here).
        temperature: T.
        mask: (...) bool, True at valid positions; None means all valid.

    Returns:
        Scalar loss.
    """
    t = temperature
    diff = (student_logits - teacher_logits.detach()) / t
    low, high = math.log(_DHKD_EPS), math.log1p(-_DHKD_EPS)
    log_d = F.logsigmoid(diff).clamp(low, high)
    log_1md = F.logsigmoid(-diff).clamp(low, high)
    per_class = 0.5 * (math.log(0.5) - log_d) + 0.5 * (math.log(0.5) - log_1md)
    return mean_valid(t**2 * per_class.sum(dim=-1), mask)


__all__ = ["bdkd", "bdkd_teacher", "binary_kl_norm"]
