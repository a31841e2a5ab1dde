"""A top-down SimCC pose estimator (RTMPose-style) in plain PyTorch.

Backbone: a small CNN (conv-BN-ReLU stages, each halving the resolution) for the embedded
tiers, or any timm model with `features_only` for the standard tier. Head: RTMPose's RTMCC
head without its gated attention unit — a k×k convolution to one map per keypoint, flattened,
ScaleNorm, a linear layer to `hidden` features per keypoint and a GELU MLP, then one linear
classifier over the x bins and one over the y bins (SimCC). The head has one stage, so the
model exposes no per-layer predictions.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PoseOutput(NamedTuple):
    simcc_x: Tensor  # (B, K, Wx) raw logits z
    simcc_y: Tensor  # (B, K, Wy)
    features: dict[str, Tensor]  # backbone stages, earliest first, each (B, C, h, w)


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallBackbone(nn.Module):
    """A 3×3 stride-2 stem conv as the first stage, then stages of (3×3 stride-2 conv, 3×3
    conv), each conv with BN and ReLU; stride 2^len(widths)."""

    def __init__(self, widths: tuple[int, ...]) -> None:
        super().__init__()
        chans = (3, *widths)
        self.stages = nn.ModuleList(
            _conv(3, widths[0], 2) if i == 0 else
            nn.Sequential(_conv(chans[i], chans[i + 1], 2), _conv(chans[i + 1], chans[i + 1], 1))
            for i in range(len(widths)))
        self.channels = list(widths)
        self.stride = 2 ** len(widths)

    def forward(self, x: Tensor) -> list[Tensor]:
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out


class TimmBackbone(nn.Module):
    """A timm model's feature stages (`features_only`); weights are not downloaded."""

    def __init__(self, name: str, out_indices: tuple[int, ...]) -> None:
        super().__init__()
        import timm

        self.model = timm.create_model(name, pretrained=False, features_only=True, out_indices=out_indices)
        info: Any = self.model.feature_info
        self.channels = list(info.channels())
        self.stride = int(info.reduction()[-1])

    def forward(self, x: Tensor) -> list[Tensor]:
        return list(self.model(x))


class ScaleNorm(nn.Module):
    """x · g / ‖x‖ · √d (RTMPose's ScaleNorm), g learnable, init 1."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.scale = dim ** -0.5
        self.eps = eps
        self.g = nn.Parameter(torch.ones(1))

    def forward(self, x: Tensor) -> Tensor:
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True) * self.scale
        return x / norm.clamp(min=self.eps) * self.g


class SimCCHead(nn.Module):
    """(B, C, h, w) → per-keypoint x and y bin logits (B, K, Wx), (B, K, Wy)."""

    def __init__(self, channels: int, feature_hw: tuple[int, int], num_keypoints: int,
                 bins: tuple[int, int], hidden: int = 128, kernel: int = 3) -> None:
        super().__init__()
        self.final = nn.Conv2d(channels, num_keypoints, kernel, padding=kernel // 2)
        flat = feature_hw[0] * feature_hw[1]
        self.mlp = nn.Sequential(ScaleNorm(flat), nn.Linear(flat, hidden, bias=False))
        self.mix = nn.Sequential(nn.GELU(), nn.Linear(hidden, hidden), nn.GELU())
        self.cls_x = nn.Linear(hidden, bins[0], bias=False)
        self.cls_y = nn.Linear(hidden, bins[1], bias=False)

    def forward(self, feature: Tensor) -> tuple[Tensor, Tensor]:
        maps = self.final(feature).flatten(2)  # (B, K, h·w)
        tokens = self.mlp(maps)  # (B, K, hidden)
        tokens = tokens + self.mix(tokens)
        return self.cls_x(tokens), self.cls_y(tokens)


class SimCCPose(nn.Module):
    """Backbone + SimCC head on (B, 3, H, W) images in [0, 1] (normalised inside)."""

    mean: Tensor
    std: Tensor

    def __init__(self, num_keypoints: int, input_size: tuple[int, int], backbone: str = "small",
                 widths: tuple[int, ...] = (16, 32, 64), hidden: int = 128, kernel: int = 3,
                 split_ratio: float = 2.0, out_indices: tuple[int, ...] = (1, 2, 3, 4)) -> None:
        super().__init__()
        w, h = input_size
        self.backbone: SmallBackbone | TimmBackbone = SmallBackbone(tuple(widths)) if backbone == "small" \
            else TimmBackbone(backbone, tuple(out_indices))
        stride = self.backbone.stride
        self.feature_hw = (math.ceil(h / stride), math.ceil(w / stride))
        self.head_args = (self.backbone.channels[-1], self.feature_hw, num_keypoints,
                          (round(w * split_ratio), round(h * split_ratio)), hidden, kernel)
        self.head = SimCCHead(*self.head_args)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.backbone_frozen = False

    def forward(self, images: Tensor) -> PoseOutput:
        stages = self.backbone((images - self.mean) / self.std)
        x, y = self.head(stages[-1])
        return PoseOutput(x, y, {f"stage{i + 1}": f for i, f in enumerate(stages)})

    def reset_head(self) -> None:
        """A freshly initialised head (from the current torch RNG)."""
        self.head = SimCCHead(*self.head_args).to(self.mean.device)

    def freeze_backbone(self) -> None:
        """Backbone parameters stop learning and BN statistics stay fixed (eval mode) for good."""
        self.backbone_frozen = True
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.backbone.eval()

    def train(self, mode: bool = True) -> SimCCPose:
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()
        return self
