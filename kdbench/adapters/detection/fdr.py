"""D-FINE's Fine-grained Distribution Refinement (FDR): edge-bin values, decoding, FGL targets.

Peng, Li, Wu, Zhang, Sun, Wu, "D-FINE: Redefine Regression Task of DETRs as Fine-grained
Distribution Refinement", ICLR 2025. Each box edge is a distribution over N + 1 bins
(N = `reg_max`) with the non-uniform values W(n); the edge offset is its expectation. The
conventions follow the official code, Peterande/D-FINE, src/zoo/dfine/dfine_utils.py
(`weighting_function`, `distance2bbox`, `bbox2distance`, `translate_gt`) and
src/zoo/dfine/dfine_decoder.py (`Integral`).

Edge order everywhere is (left, top, right, bottom); boxes are normalised to the image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def weighting_function(
    reg_max: int,
    up: float = 0.5,
    reg_scale: float = 4.0,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """The (N+1,) bin values W(n) of D-FINE's non-uniform weighting function.

    As the official `weighting_function`, with a = |up|, c = |reg_scale|, N = reg_max and the
    step s = (a·c + 1)^{2/(N−2)}:

        W(0) = −2ac,  W(n) = 1 − s^{N/2−n} for 1 ≤ n < N/2,  W(N/2) = 0,
        W(n) = s^{n−N/2} − 1 for N/2 < n < N,  W(N) = 2ac.

    So W(1) = −ac and W(N−1) = ac: the inner bins are geometric up to ±ac, the end bins
    jump to ±2ac. W is strictly increasing and antisymmetric, W(N−n) = −W(n). Computed in
    float64, then cast to `dtype` (the default dtype when None).

    Args:
        reg_max: N, the number of bins minus one; even and at least 4.
        up: a, the upper-bound factor.
        reg_scale: c, the curvature (and the edge-offset scale of `distance2bbox`).
        dtype: dtype of the result.
        device: device of the result.

    Returns:
        (N+1,) increasing bin values.
    """
    if reg_max < 4 or reg_max % 2:
        raise ValueError(f"reg_max must be even and at least 4, got {reg_max}")
    bound = abs(up) * abs(reg_scale)  # a·c
    step = (bound + 1.0) ** (2.0 / (reg_max - 2))
    half = reg_max // 2
    powers = torch.arange(1, half, dtype=torch.float64)  # 1 .. N/2 − 1
    right = step**powers - 1.0  # W(N/2 + i), i = 1 .. N/2 − 1
    end = torch.tensor([2.0 * bound], dtype=torch.float64)
    zero = torch.zeros(1, dtype=torch.float64)
    values = torch.cat([-end, -right.flip(0), zero, right, end])
    return values.to(dtype=dtype or torch.get_default_dtype(), device=device)


def integral(corner_logits: Tensor, project: Tensor) -> Tensor:
    """Expected edge offsets d = Σ_n softmax(L)_n · W(n), as the official `Integral`.

    Args:
        corner_logits: (..., 4, N+1) edge-bin logits (any leading shape; the softmax runs
            over the last dim).
        project: (N+1,) bin values W from `weighting_function`.

    Returns:
        (..., 4) offsets in W units.
    """
    if corner_logits.shape[-1] != project.numel():
        raise ValueError(f"{corner_logits.shape[-1]} bin logits but {project.numel()} bin values")
    probs = F.softmax(corner_logits, dim=-1)
    return (probs * project.to(probs)).sum(dim=-1)


def distance2bbox(points: Tensor, distance: Tensor, reg_scale: float) -> Tensor:
    """Decode edge offsets around reference boxes into boxes, as the official `distance2bbox`.

    With c = |reg_scale| and the reference box (cx, cy, w, h),

        x1 = cx − (c/2 + d_left)·(w/c) = cx − w/2 − (w/c)·d_left,
        x2 = cx + (c/2 + d_right)·(w/c),  y1, y2 likewise with cy, h, d_top, d_bottom,

    so zero offsets return the reference box. Like the official code the result is
    converted back to (cx, cy, w, h), not xyxy.

    Args:
        points: (..., 4) reference boxes (cx, cy, w, h).
        distance: (..., 4) offsets (left, top, right, bottom) in W units.
        reg_scale: c.

    Returns:
        (..., 4) boxes (cx, cy, w, h).
    """
    c = abs(reg_scale)
    cx, cy, w, h = points.unbind(-1)
    left, top, right, bottom = distance.unbind(-1)
    x1 = cx - (0.5 * c + left) * (w / c)
    y1 = cy - (0.5 * c + top) * (h / c)
    x2 = cx + (0.5 * c + right) * (w / c)
    y2 = cy + (0.5 * c + bottom) * (h / c)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)


def bbox2distance(
    points: Tensor, gt_xyxy: Tensor, reg_max: int, reg_scale: float = 4.0, up: float = 0.5
) -> tuple[Tensor, Tensor, Tensor]:
    """FGL targets: each GT edge as two neighbouring bins and their interpolation weights.

    Follows the official `bbox2distance` and `translate_gt`. With c = |reg_scale|, each GT
    edge is first put in W units relative to the reference box (cx, cy, w, h),

        φ_left = (cx − x1_gt) / (w/c + 1e-16) − c/2,  φ_right = (x2_gt − cx) / (w/c + 1e-16) − c/2,

    (top, bottom likewise with cy, h), the inverse of `distance2bbox`. Then, inside the range
    W(0) ≤ φ < W(N): n_← = the largest n with W(n) ≤ φ, n_→ = n_← + 1,

        ω_→ = (φ − W(n_←)) / (W(n_→) − W(n_←)),  ω_← = 1 − ω_→,

    so an edge exactly on bin n gets n_← = n, ω_← = 1. Out of range the official clamps to
    an end bin with all the mass on it: φ < W(0) gives n_← = 0, ω_← = 1, ω_→ = 0 (all on
    bin 0); φ ≥ W(N) gives n_← = N − 1, ω_← = 0, ω_→ = 1 (all on bin N; the official stores
    the index as N − 0.1, which its loss truncates to N − 1).

    Unlike the official, which returns (flat float index, ω_→, ω_←), this returns the
    index as long, in the order (n_←, ω_←, ω_→), keeping the (..., 4) shape. All outputs
    are detached.

    Args:
        points: (..., 4) reference boxes (cx, cy, w, h), normalised.
        gt_xyxy: (..., 4) matched ground-truth boxes (x1, y1, x2, y2), normalised.
        reg_max: N.
        reg_scale: c.
        up: a of `weighting_function`.

    Returns:
        (left_bin, weight_left, weight_right), each (..., 4); left_bin is long in [0, N−1].
    """
    points, gt_xyxy = points.detach(), gt_xyxy.detach()
    c = abs(reg_scale)
    cx, cy, w, h = points.unbind(-1)
    x1, y1, x2, y2 = gt_xyxy.unbind(-1)
    unit_w, unit_h = w / c + 1e-16, h / c + 1e-16
    phi = torch.stack([(cx - x1) / unit_w, (cy - y1) / unit_h, (x2 - cx) / unit_w, (y2 - cy) / unit_h], dim=-1)
    phi = phi - 0.5 * c  # (..., 4) GT edges in W units
    values = weighting_function(reg_max, up, reg_scale, dtype=phi.dtype, device=phi.device)
    left = torch.searchsorted(values, phi.contiguous(), right=True) - 1  # # of W(n) ≤ φ, minus 1
    below, above = left < 0, left >= reg_max
    left = left.clamp(0, reg_max - 1)
    w_left_value, w_right_value = values[left], values[left + 1]
    weight_right = (phi - w_left_value) / (w_right_value - w_left_value)
    weight_right = torch.where(below, torch.zeros_like(phi), weight_right)
    weight_right = torch.where(above, torch.ones_like(phi), weight_right)
    return left, 1.0 - weight_right, weight_right


def rebin_edges(
    ref_from: Tensor, ref_to: Tensor, reg_max_from: int, reg_max_to: int,
    reg_scale_from: float = 4.0, up_from: float = 0.5, reg_scale_to: float = 4.0, up_to: float = 0.5,
) -> tuple[Tensor, Tensor, Tensor]:
    """One model's edge bins as two-bin targets on another model's bins: a shared frame.

    Each model's edge bins are offsets from its own reference box (its initial box), so bin n of
    one model and bin n of another are different edge positions. Here bin n of edge e of the
    source model is put where it lies in the image, by `distance2bbox`'s edge formulas on the
    source reference (c = |reg_scale_from|),

        x1_n = cx − (c/2 + W(n))·(w/c),  x2_n = cx + (c/2 + W(n))·(w/c)   (y1, y2 likewise),

    and that position is re-expressed on the target reference and bins by `bbox2distance`, the
    two neighbouring bins and weights FGL's targets are built with. Moving a distribution p over
    the source bins with these weights (`kdbench.outputs.Rebin`) gives one over the target bins
    with the same mass and, where every position lies inside the target's range, the same
    expected edge; positions out of range are clamped to an end bin, as `bbox2distance` does.
    With equal references and equal bins it is the identity. Computed in float64 and detached.

    Args:
        ref_from: (..., 4) source reference boxes (cx, cy, w, h), normalised.
        ref_to: (..., 4) target reference boxes at the same positions.
        reg_max_from, reg_max_to: N of each model.
        reg_scale_from, up_from, reg_scale_to, up_to: each model's c and a.

    Returns:
        (left_bin, weight_left, weight_right), each (..., 4, N_from + 1): for every edge and
        source bin, the target's left bin (long, in [0, N_to − 1]) and the two weights.
    """
    a = ref_from.detach().to(torch.float64)
    b = ref_to.detach().to(torch.float64)
    values = weighting_function(reg_max_from, up_from, reg_scale_from, dtype=torch.float64, device=a.device)
    c = abs(reg_scale_from)
    reach = (0.5 * c + values) / c  # (K,) each bin's distance from the centre, in box widths
    cx, cy, w, h = (v[..., None] for v in a.unbind(-1))  # (..., 1)
    edges = torch.stack([cx - reach * w, cy - reach * h, cx + reach * w, cy + reach * h], dim=-1)  # (..., K, 4)
    left, w_left, w_right = bbox2distance(b[..., None, :].expand_as(edges), edges, reg_max_to, reg_scale_to, up_to)
    return left.transpose(-1, -2), w_left.transpose(-1, -2), w_right.transpose(-1, -2)


__all__ = ["bbox2distance", "distance2bbox", "integral", "rebin_edges", "weighting_function"]
