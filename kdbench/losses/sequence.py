"""Sequence-model losses: fairseq's label-smoothed cross-entropy over target tokens."""

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


__all__ = ["label_smoothed_nll"]
