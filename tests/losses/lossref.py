"""Independent float64 reference arithmetic for the loss tests: plain Python loops and math.

Nothing here calls kdbench or torch.nn.functional; each helper works on Python lists.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

Row = Sequence[float]


def rows(x: torch.Tensor) -> list[list[float]]:
    """A (..., K) tensor as a list of K-lists, leading dims flattened in C order."""
    return np.asarray(x.detach().numpy(), dtype=np.float64).reshape(-1, x.shape[-1]).tolist()


def flat(x: torch.Tensor) -> list:
    """A tensor's entries as a flat Python list, C order."""
    return np.asarray(x.detach().numpy()).reshape(-1).tolist()


def softmax(row: Row) -> list[float]:
    top = max(row)
    exps = [math.exp(v - top) for v in row]
    total = sum(exps)
    return [e / total for e in exps]


def log_softmax(row: Row) -> list[float]:
    top = max(row)
    lse = top + math.log(sum(math.exp(v - top) for v in row))
    return [v - lse for v in row]


def kl(p: Row, q: Row) -> float:
    """KL(p ‖ q) for probability lists."""
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q, strict=True) if pi > 0)


def entropy(p: Row) -> float:
    return -sum(pi * math.log(pi) for pi in p if pi > 0)


def scaled(row: Row, factor: float) -> list[float]:
    return [v * factor for v in row]


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def valid_mean(values: Sequence[float], valid: Sequence[bool]) -> float:
    kept = [v for v, ok in zip(values, valid, strict=True) if ok]
    return sum(kept) / len(kept)


def without(row: Row, index: int) -> list[float]:
    return [v for i, v in enumerate(row) if i != index]


def close(value: torch.Tensor, expected: float) -> None:
    """A float64 loss equals the hand value to 1e-10."""
    assert value.dtype == torch.float64
    assert math.isclose(float(value.detach()), expected, rel_tol=0, abs_tol=1e-10), (float(value), expected)


def logit_case(k: int) -> dict[str, torch.Tensor]:
    """(2, 3, k) float64 student and teacher logits, labels and a mask: six positions, four valid."""
    g = torch.Generator().manual_seed(0)
    return {
        "s": torch.randn(2, 3, k, generator=g, dtype=torch.float64) * 2,
        "t": torch.randn(2, 3, k, generator=g, dtype=torch.float64) * 2,
        "y": torch.randint(0, k, (2, 3), generator=g),
        "mask": torch.tensor([[True, False, True], [True, True, False]]),
    }
