"""SimCC coordinate classification (Li et al., "SimCC: a Simple Coordinate Classification
Perspective for Human Pose Estimation", ECCV 2022), with RTMPose's settings (Jiang et al.,
"RTMPose: Real-Time Multi-Person Pose Estimation based on MMPose", 2023): each keypoint's x and
y are classified into bins of 1/split_ratio pixel; targets are Gaussians around the bin of the
ground truth; decoding takes the arg-max bin. Follows mmpose's `SimCCLabel` (gaussian smoothing,
normalize=False) and `get_simcc_maximum`.
"""

from __future__ import annotations

import torch
from torch import Tensor


def simcc_targets(
    keypoints: Tensor, input_size: tuple[int, int], sigma: tuple[float, float], split_ratio: float = 2.0
) -> tuple[Tensor, Tensor, Tensor]:
    """Gaussian SimCC targets and keypoint weights.

    With μ = round(p·split_ratio) the ground-truth bin (mmpose rounds before the Gaussian),
    target_x[i] = exp(−(i − μ_x)²/(2σ_x²)) over the Wx = round(W·split_ratio) bins, and likewise
    for y. A keypoint weighs 1 when labeled (v > 0) and its 3σ window reaches the bins (else 0,
    as mmpose), and its targets are then zero.

    Args:
        keypoints: (B, K, 3) x, y in input pixels and visibility v.
        input_size: (W, H) of the model input.
        sigma: (σ_x, σ_y) in bins.
        split_ratio: bins per pixel.

    Returns:
        target_x (B, K, Wx), target_y (B, K, Wy), weight (B, K) (float, on keypoints' device).
    """
    wx, wy = (round(s * split_ratio) for s in input_size)
    mu = torch.round(keypoints[..., :2].double() * split_ratio)  # (B, K, 2)
    sig = torch.tensor(sigma, dtype=torch.float64, device=keypoints.device)
    radius = 3 * sig
    bins = torch.tensor([wx, wy], dtype=torch.float64, device=keypoints.device)
    inside = ((mu - radius) < bins).all(-1) & ((mu + radius + 1) >= 0).all(-1)  # (B, K)
    weight = ((keypoints[..., 2] > 0) & inside).float()
    targets = []
    for axis, n in enumerate((wx, wy)):
        grid = torch.arange(n, dtype=torch.float64, device=keypoints.device)
        g = torch.exp(-((grid - mu[..., axis, None]) ** 2) / (2 * sig[axis] ** 2))  # (B, K, n)
        targets.append((g * weight[..., None]).float())
    return targets[0], targets[1], weight


def simcc_decode(logits_x: Tensor, logits_y: Tensor, split_ratio: float = 2.0) -> tuple[Tensor, Tensor]:
    """Arg-max decoding with a confidence.

    The location is (argmax_i x_i, argmax_j y_j)/split_ratio, as mmpose's `get_simcc_maximum`;
    the confidence is the smaller of the two axes' maximum probabilities under σ(logits).
    mmpose takes the raw logit maxima instead (and moves a keypoint whose maximum is ≤ 0 to
    −1): under the shift-invariant KL loss the raw scale is arbitrary, so kdbench scores with
    the head's own distribution, which lies in (0, 1].

    Args:
        logits_x: (B, K, Wx) the distribution's logits (RTMPose: β·z).
        logits_y: (B, K, Wy).
        split_ratio: bins per pixel.

    Returns:
        locations (B, K, 2) in input pixels and confidences (B, K).
    """
    prob_x, loc_x = logits_x.softmax(-1).max(-1)
    prob_y, loc_y = logits_y.softmax(-1).max(-1)
    locs = torch.stack([loc_x, loc_y], -1).to(logits_x.dtype) / split_ratio
    return locs, torch.minimum(prob_x, prob_y)
