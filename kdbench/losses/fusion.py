"""TGeo-KD's sample-wise fusion of the KD and hard-label terms (Hu et al., "Less or More From
Teacher: Exploiting Trilateral Geometry For Knowledge Distillation", ICLR 2024).

Two pure functions: the trilateral-geometry state a fusion network reads, and the fused loss for
given per-position ratios α. The fusion network itself belongs to the method
(`kdbench/methods/tgeokd.py`). Distributions on the last dimension, any leading position
dimensions, `mask` (bool, the leading shape) selects the positions that count; teacher inputs are
detached inside.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench.losses._common import expand_prefix, hard_target, kl_log, mean_valid


def _valid(x: Tensor, mask: Tensor | None, shape: torch.Size) -> Tensor:
    """`x` with every masked position (a prefix of its shape is `shape`) replaced by zeros, so that
    neither the value nor the gradient of what a masked position holds (NaN included) goes anywhere."""
    if mask is None:
        return x
    valid = expand_prefix(mask.bool(), shape)
    valid = valid.reshape(*valid.shape, *([1] * (x.ndim - valid.ndim)))
    return torch.where(valid, x, torch.zeros_like(x))


def trilateral_relations(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    prototypes: Tensor,
    mask: Tensor | None = None,
) -> Tensor:
    """The vertices and edges of TGeo-KD's trilateral geometry, the fusion network's input.

    With s = σ(z_S), t = σ(sg(z_T)) (both at temperature 1), g the one-hot ground truth and
    t̄ = sg(prototypes)[y] the teacher's mean prediction over the training samples of the
    sample's class (the inter-sample vertex), per position

        r = [s, t, g, t̄, (t̄ − s)², (g − s)², (t − s)², (t − g)², (t̄ − g)²]   ∈ R^{9K},

    squares taken class by class: the four vertices and the five edges S–T̄, S–G, S–T, T–G, T̄–G
    (intra-sample among S, T, G; inter-sample through T̄), as the official `state_design`,
    "option 3", the one its `Controller` is built for
    (Chengming0501/TGeo-KD at 5a69cbe, src/fusion_ratio_bilevel.py, lines 63-86 and 126). The
    student's s carries its gradient here; the method decides whether to detach it.

    Args:
        student_logits: (..., K) student logits.
        teacher_logits: (..., K) teacher logits (detached here).
        target: (...) class indices, or a (..., K) soft target (its argmax is used).
        prototypes: (K, K), row c the teacher's mean σ(z_T) over the training samples of class c
            (detached here).
        mask: (...) bool, True at valid positions; None means all valid. Masked positions get
            the state of zero logits and class 0 (finite, and later ignored).

    Returns:
        (..., 9K) state.
    """
    shape = student_logits.shape[:-1]
    index = hard_target(target, student_logits, mask)
    s = F.softmax(_valid(student_logits, mask, shape), dim=-1)
    t = F.softmax(_valid(teacher_logits.detach(), mask, shape), dim=-1)
    g = F.one_hot(index, student_logits.shape[-1]).to(s.dtype)
    t_bar = prototypes.detach().to(s.dtype)[index]
    return torch.cat([s, t, g, t_bar, (t_bar - s) ** 2, (g - s) ** 2, (t - s) ** 2, (t - g) ** 2,
                      (t_bar - g) ** 2], dim=-1)


def fused_kd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    alpha: Tensor,
    temperature: float = 1.5,
    mask: Tensor | None = None,
) -> Tensor:
    """TGeo-KD's loss: the KD and hard-label terms fused with a ratio α_i per position.

    Per position i, with p_T = σ(z_T/T), p_S = σ(z_S/T),

        L_i = α_i · T² · KL(p_T ‖ p_S) + (1 − α_i) · CE(z_S, y_i),
        L = mean_valid(L_i),

    α multiplying the KD term, as the official `lower_loss` (Chengming0501/TGeo-KD at 5a69cbe,
    src/fusion_ratio_bilevel.py, lines 139-145: KLDivLoss summed over classes times T², the
    per-sample ratio, the batch mean). The CE is on the student's logits, as the paper's L_CE and
    the official CIFAR-100 code's `KDLoss` (cifar100/lib/losses/kd_loss.py at 62f5e95); the
    released script applies `CrossEntropyLoss` to the student's softmax output instead (a second
    softmax), which kdbench does not copy. α is not detached: a fusion network learns through it.

    Args:
        student_logits: (..., K) student logits.
        teacher_logits: (..., K) teacher logits (detached here).
        target: (...) class indices, or a (..., K) soft target (its argmax is used).
        alpha: (...) fusion ratios in [0, 1].
        temperature: T of the KD term (the CE is at temperature 1).
        mask: (...) bool, True at valid positions; None means all valid.

    Returns:
        Scalar loss.
    """
    shape = student_logits.shape[:-1]
    tau = temperature
    z_s = _valid(student_logits, mask, shape)
    z_t = _valid(teacher_logits.detach(), mask, shape)
    a = _valid(alpha, mask, shape)
    index = hard_target(target, student_logits, mask)
    kd = tau**2 * kl_log(F.log_softmax(z_t / tau, dim=-1), F.log_softmax(z_s / tau, dim=-1))
    ce = -F.log_softmax(z_s, dim=-1).gather(-1, index.unsqueeze(-1)).squeeze(-1)
    return mean_valid(a * kd + (1 - a) * ce, mask)
