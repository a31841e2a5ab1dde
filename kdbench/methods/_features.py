"""Helpers shared by feature-based methods."""

from __future__ import annotations

from torch import Tensor


def pooled(feature: Tensor) -> Tensor:
    """(B, C, *spatial) → (B, C) by global average pooling; (B, D) unchanged."""
    return feature.flatten(2).mean(-1) if feature.dim() > 2 else feature
