"""MDCS's losses (Zhao, Wen, Wang & Zhou, "MDCS: More Diverse Experts with Consistency
Self-distillation for Long-tailed Recognition", ICCV 2023): the diversity loss, each expert's
cross-entropy on its logits shifted by λ times the log of the training label distribution, and
the consistency self-distillation (CS) from each expert's weak-view prediction into its strong-view
prediction on the confidently and correctly predicted instances (CIS).

Read in the official code, fistyee/MDCS at 1a1d54e55f114c1d922ded64e3a48a4808bddd23, `model/loss.py`
`MDCSLoss.forward`: the prior is the list of training class counts (its normalisation by the total
is commented out, which only moves every logit of a row by the same λ·log N, so softmax and CE are
unchanged), the shift is `log(prior ** λ + 1e-9)`; the KL is `F.kl_div(log_softmax(strong / T),
softmax(weak / T).detach(), reduction="batchmean") · T²` over the selected rows, T = 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench.losses._common import kl_log, mean_valid

#: The official `+ 1e-9` inside the logarithm of the shifted prior.
PRIOR_EPS = 1e-9


def prior_shift(class_counts: Tensor, lam: float) -> Tensor:
    """(K,) float64 log(n_c^λ + 1e-9): the logit shift of an expert with distribution exponent λ.

    `class_counts` (K,) are the training split's per-class counts n_c (the official `prior`, not
    normalised); every count must be positive (a class without training samples has no prior).

    Raises:
        ValueError: a class count is not positive.
    """
    counts = class_counts.double()
    if bool((counts <= 0).any()):
        raise ValueError(f"MDCS needs every class in the training split; class counts {counts.long().tolist()}")
    return torch.log(counts.pow(lam) + PRIOR_EPS)  # float64; the losses cast it to the logits' dtype


def diversity_ce(logits: Tensor, target: Tensor, shift: Tensor, mask: Tensor | None = None) -> Tensor:
    """One expert's diversity loss: CE(z + shift, y), averaged over valid positions.

    With shift = λ·log π (`prior_shift`), λ > 0 pushes the expert's own logits z towards the tail
    classes and λ < 0 towards the head ones (logit adjustment: λ = 1 gives balanced logits); the
    official experts have λ = −0.5 (head), 1 (medium), 2.5 (few). The official
    `F.cross_entropy(expert_logits, target)` over both views' rows.

    Args:
        logits: (..., K) the expert's logits z.
        target: (...) class indices y.
        shift: (K,) the expert's logit shift.
        mask: (...) bool, True at valid positions; None: all valid.
    """
    adjusted = logits + shift.to(logits.dtype)
    ce = F.cross_entropy(adjusted.reshape(-1, adjusted.shape[-1]), target.reshape(-1).long(), reduction="none")
    return mean_valid(ce.view(target.shape), mask)


def consistency_sd(weak: Tensor, strong: Tensor, target: Tensor, temperature: float = 1.0,
                   mask: Tensor | None = None) -> Tensor:
    """MDCS's consistency self-distillation of one expert with confident instance sampling:
    T²·KL(σ(sg(z_w)/T) ‖ σ(z_s/T)), summed over the K classes, averaged over the instances the
    weak view classifies correctly, argmax z_w = y (CIS), 0 when there are none.

    z_w and z_s are the expert's shifted logits (z + λ·log π) on the weakly and strongly augmented
    views of the same instances; the weak side is detached. The official per-expert
    `F.kl_div(student[sel], teacher[sel], reduction="batchmean")·T²` with
    sel = (argmax softmax(teacher) == target), skipped when sel is empty.

    Args:
        weak: (..., K) shifted logits of the weak view, the teacher side (detached here).
        strong: (..., K) shifted logits of the strong view.
        target: (...) class indices.
        temperature: T (the official 1).
        mask: (...) bool, True at valid positions; None: all valid.
    """
    t = temperature
    weak = weak.detach()
    confident = weak.argmax(dim=-1) == target.long()
    if mask is not None:
        confident = confident & mask.bool()
    kl = kl_log(F.log_softmax(weak / t, dim=-1), F.log_softmax(strong / t, dim=-1)) * t**2
    return mean_valid(kl, confident)


__all__ = ["PRIOR_EPS", "consistency_sd", "diversity_ce", "prior_shift"]
