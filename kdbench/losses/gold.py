"""GO-LSD (D-FINE): the final layer's distributions, detached, teach the earlier layers'.

`ddf` is D-FINE's Decoupled Distillation Focal loss for box-edge distributions (matched /
unmatched queries); `layer_self_distillation` is the same rule for any per-layer heads.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdbench.losses._common import expand_prefix, kl_log, mean_valid


def _weighted_kl(
    student_logits: Tensor, teacher_logits: Tensor, weight: Tensor | None, temperature: float
) -> Tensor:
    """Per-row w · T² · KL(σ(t/T) ‖ σ(s/T)), shape = the logits' leading shape."""
    t = temperature
    kl = t**2 * kl_log(
        F.log_softmax(teacher_logits.detach() / t, dim=-1),
        F.log_softmax(student_logits / t, dim=-1),
    )
    if weight is None:
        return kl
    return kl * expand_prefix(weight.detach().to(kl.dtype), kl.shape)


def ddf(
    student_logits: Tensor,
    teacher_logits: Tensor,
    weight: Tensor,
    matched: Tensor | None = None,
    temperature: float = 5.0,
    counts: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """D-FINE's Decoupled Distillation Focal (DDF) loss of GO-LSD.

    Peng, Li, Wu, Zhang, Sun, Wu, "D-FINE: Redefine Regression Task of DETRs as Fine-grained
    Distribution Refinement", ICLR 2025. Follows `DFINECriterion.loss_local` (the
    'teacher_corners' branch) of the official code, Peterande/D-FINE,
    src/zoo/dfine/dfine_criterion.py. There every edge of every query is one row of
    (N+1) bin logits, and

        row loss  ℓ_{p,e} = w_p · T² · Σ_bins KL(σ(L^T_{p,e}/T) ‖ σ(L^S_{p,e}/T)),
        L_DDF = [√K_m·mean_{matched rows}(ℓ) + √K_u·mean_{unmatched rows}(ℓ)] / (√K_m + √K_u).

    The means run over ROWS (query × edge), so per query the KL is AVERAGED over its E
    edges, not summed: mean_rows(ℓ) = mean_p(w_p · T² · (1/E)·Σ_e KL_{p,e}). The official
    K_m, K_u count edge rows × 8/B (32/B in earlier revisions; B the per-device batch); that
    common factor cancels in the ratio, so K_m, K_u here are the numbers of matched and
    unmatched positions. An empty group contributes 0 (the official `... if mask.any()
    else 0`). With `matched` None the loss is mean_rows(ℓ). The official criterion skips the
    loss when student and teacher corners are identical (the final layer); here it is then
    0 anyway. The weight (IoU for matched, max sigmoid class score for unmatched in D-FINE)
    is detached, as the official `weight_targets_local.detach()`.

    `counts` (K_m, K_u) replaces the two counts by those of another set of positions: the
    official criterion weighs the denoising queries' two means with num_pos and num_neg of the
    matching queries (dfine_criterion.py lines 217-229 set them only where `is_dn` is absent).

    Args:
        student_logits: (P, E, N+1) or (P, N+1) logits of the layer being taught.
        teacher_logits: same shape, the final layer's logits (detached here).
        weight: (P,) per-position weight (or of the full leading shape).
        matched: (P,) bool, True for positions matched to a ground truth; None: no split.
        temperature: T.
        counts: (K_m, K_u) for the √K weights; None: the numbers of matched and unmatched positions.

    Returns:
        Scalar loss.
    """
    rows = _weighted_kl(student_logits, teacher_logits, weight, temperature)
    if matched is None:
        return rows.mean()
    is_matched = expand_prefix(matched.bool(), rows.shape)
    if counts is None:
        n_matched = matched.bool().sum().to(rows.dtype)
        counts = n_matched, matched.numel() - n_matched
    root_m, root_u = (c.to(rows.dtype).sqrt() for c in counts)
    mean_m = mean_valid(rows, is_matched)  # 0 when no position is matched
    mean_u = mean_valid(rows, ~is_matched)
    return (root_m * mean_m + root_u * mean_u) / (root_m + root_u).clamp_min(1.0)


def layer_self_distillation(
    layer_logits: list[Tensor],
    final_logits: Tensor,
    weight: Tensor | None,
    temperature: float = 5.0,
    mask: Tensor | None = None,
) -> Tensor:
    """GO-LSD's rule for per-layer heads: the final layer teaches every earlier layer.

    Peng et al., "D-FINE", ICLR 2025 (global optimal localization self-distillation,
    generalised by kdbench from box-edge distributions to any per-layer head). For each
    earlier layer l,

        L = Σ_l mean_valid(w · T² · KL(σ(z_final/T) ‖ σ(z_l/T))),

    KL summed over the last dim; the mean runs over all leading positions (for
    (P, E, N+1) edge logits over query × edge rows, like `ddf`). The final logits and the
    weight are detached, so the final layer is not pulled toward the earlier ones.

    Args:
        layer_logits: the earlier layers' logits, each (..., K) like `final_logits`.
        final_logits: (..., K) the final layer's logits (detached here).
        weight: per-position weight whose shape is a prefix of the leading shape (e.g. the
            final layer's confidence in the correct class), or None for 1.
        temperature: T.
        mask: bool, a prefix of the leading shape, True at valid positions; None: all valid.

    Returns:
        Scalar loss (0 for an empty list).
    """
    total = final_logits.new_zeros(()).detach()
    for logits in layer_logits:
        total = total + mean_valid(_weighted_kl(logits, final_logits, weight, temperature), mask)
    return total


__all__ = ["ddf", "layer_self_distillation"]
