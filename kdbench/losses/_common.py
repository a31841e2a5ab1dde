"""Shared helpers of the loss library: masking, broadcasting, divergences on log-probabilities."""

from __future__ import annotations

import torch
from torch import Tensor

from kdbench.outputs import masked_mean


def expand_prefix(x: Tensor, shape: torch.Size | tuple[int, ...]) -> Tensor:
    """Broadcast `x`, whose shape is a prefix of `shape`, to `shape` (appending trailing dims).

    A per-query weight (P,) thus applies to every edge of a (P, E) grid of positions.
    """
    if tuple(x.shape) != tuple(shape[: x.ndim]):
        raise ValueError(
            f"shape {tuple(x.shape)} is not a prefix of the positions' shape {tuple(shape)}"
        )
    return x.reshape(*x.shape, *([1] * (len(shape) - x.ndim))).expand(*shape)


def mean_valid(values: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of per-position `values` over the positions where `mask` is True.

    Masked positions are replaced by zeros before averaging, so whatever they hold (huge
    values, inf, NaN) cannot leak into the result. `mask` may cover a prefix of the shape.
    """
    if mask is None:
        return masked_mean(values, None)
    mask = expand_prefix(mask.bool(), values.shape)
    return masked_mean(torch.where(mask, values, torch.zeros_like(values)), mask)


def kl_log(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p ‖ q) = Σ p (log p − log q) over the last dim, from log-probabilities.

    Zero-probability entries of p contribute 0 (no 0·(−inf) NaN).
    """
    p = log_p.exp()
    terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))
    return terms.sum(dim=-1)


def entropy_log(log_p: Tensor) -> Tensor:
    """Shannon entropy −Σ p log p over the last dim, from log-probabilities."""
    p = log_p.exp()
    return -torch.where(p > 0, p * log_p, torch.zeros_like(p)).sum(dim=-1)


def target_mask(logits: Tensor, target: Tensor) -> Tensor:
    """Bool (..., K), True at the target class of each position (`target`: indices (...))."""
    index = target.long().unsqueeze(-1)
    return torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, index, True)


def drop_classes(x: Tensor, drop: Tensor) -> Tensor:
    """Remove the classes where `drop` (bool, same shape as x) is True: (..., K) → (..., K − m).

    Every position must drop the same number m of classes.
    """
    m = int(drop[(0,) * (drop.ndim - 1)].sum()) if drop.numel() else 0
    return x[~drop].reshape(*x.shape[:-1], x.shape[-1] - m)


def hard_target(target: Tensor, logits: Tensor, mask: Tensor | None = None) -> Tensor:
    """Class indices (...): `target` itself, or the argmax of a soft target (..., K).

    Indices at masked positions (padding, often −100) are replaced by 0 so that they can be
    gathered safely; those positions are excluded from the mean anyway.
    """
    if target.shape == logits.shape:
        index = target.argmax(dim=-1)
    elif target.shape == logits.shape[:-1]:
        index = target.long()
    else:
        raise ValueError(
            f"target has shape {tuple(target.shape)}; expected {tuple(logits.shape[:-1])} "
            f"(class indices) or {tuple(logits.shape)} (soft target)"
        )
    if mask is not None:
        index = torch.where(expand_prefix(mask.bool(), index.shape), index, torch.zeros_like(index))
    return index
