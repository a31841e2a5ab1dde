"""Self-supervised label augmentation and its self-distillation (Lee, Hwang & Shin, "Self-supervised
Label Augmentation via Input Transformations", ICML 2020).

Joint logits are laid out (..., M, K·M): for each position, its M transformed copies (copy m is
t_m of the input, t_0 the identity), each with K·M logits over the joint labels (k, m) at index
k·M + m, as the official code numbers them (hankook/SLA at bc5d9cd, `trainers.py`
`create_sla_sd_trainer`: `joint_labels = labels*n + i`). `mask` (bool, the leading shape) selects
the averaged positions; the aggregated teacher side of the distillation is detached inside.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdbench.losses._common import expand_prefix, kl_log, mean_valid


def sla_aggregate(joint_logits: Tensor) -> Tensor:
    """The aggregated classifier: z_agg,k = (1/M) Σ_m z_m[k·M + m], (..., M, K·M) → (..., K).

    The mean over transformations of each copy's joint logit at its own transformation, as the
    official `agg_preds = Σ_i joint_preds[i::n, i::n] / n` (logits averaged, not probabilities).
    """
    *lead, m, km = joint_logits.shape
    if km % m:
        raise ValueError(f"joint logits (..., M, K·M) with M = {m} need a last dim divisible by M, got {km}")
    grid = joint_logits.reshape(*lead, m, km // m, m)  # [..., copy m', class k, transformation m]
    return grid.diagonal(dim1=-3, dim2=-1).mean(dim=-1)  # (..., K, M) at m' = m → (..., K)


def sla_joint_ce(joint_logits: Tensor, joint_target: Tensor, mask: Tensor | None = None,
                 large_loss: bool = False) -> Tensor:
    """SLA's joint loss: CE(z_m, y·M + m) averaged over the M copies and the valid positions.

    The official `F.cross_entropy(joint_preds, joint_labels)` over the B·M rows (a mean, so every
    copy weighs 1/M of a sample); `large_loss` multiplies it by M (`--with-large-loss`: the sum over
    transformations the README recommends on ImageNet-scale data).

    Args:
        joint_logits: (..., M, K·M).
        joint_target: (..., M) joint labels y·M + m.
        mask: (...) bool, True at valid positions; None: all valid.
        large_loss: sum over the M copies instead of the mean.
    """
    m = joint_logits.shape[-2]
    ce = F.cross_entropy(joint_logits.flatten(0, -2), joint_target.reshape(-1).long(), reduction="none")
    ce = ce.view(joint_target.shape)  # (..., M)
    loss = mean_valid(ce, None if mask is None else expand_prefix(mask.bool(), ce.shape))
    return loss * m if large_loss else loss


def sla_sd(single_logits: Tensor, joint_logits: Tensor, temperature: float = 1.0,
           mask: Tensor | None = None) -> Tensor:
    """SLA-SD's self-distillation: T²·KL(σ(sg(z_agg)/T) ‖ σ(z/T)), summed over the K classes,
    averaged over valid positions.

    z is the single (K-way) classifier's logits on the untransformed input, z_agg
    `sla_aggregate(joint_logits)`, detached: the official `F.kl_div(log_softmax(single/T),
    softmax(agg.detach()/T), reduction="batchmean")·T²` (a sum over classes, a mean over the batch).

    Args:
        single_logits: (..., K).
        joint_logits: (..., M, K·M), the teacher side, detached here.
        temperature: T (the official `--T` default is 1).
        mask: (...) bool, True at valid positions; None: all valid.
    """
    t = temperature
    target = sla_aggregate(joint_logits.detach())
    log_p_agg = F.log_softmax(target / t, dim=-1)
    log_p = F.log_softmax(single_logits / t, dim=-1)
    return mean_valid(kl_log(log_p_agg, log_p) * t**2, mask)
