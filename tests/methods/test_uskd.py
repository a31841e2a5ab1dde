"""USKD's method hands a soft (mixup) target to the loss as it is, as the official yzd-v/cls_KD
USKDLoss takes its gt_label: two target classes, not the argmax. Expected values by hand in float64."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kdbench.methods import get_method
from kdbench.methods.base import MethodContext, RunState, make_config
from kdbench.outputs import Head, Outputs
from tests.losses.lossref import rows
from tests.losses.test_losses_self_distill import _uskd_reference

B, C, K = 4, 3, 5
Y, OTHER, LAM = [0, 3, 2, 4], [2, 1, 4, 0], 0.7


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _mixup() -> torch.Tensor:
    soft = torch.zeros(B, K, dtype=torch.float64)
    for i, (a, b) in enumerate(zip(Y, OTHER, strict=True)):
        soft[i, a], soft[i, b] = LAM, 1 - LAM
    return soft


def _student(logits: torch.Tensor, target: torch.Tensor, mid: torch.Tensor) -> Outputs:
    return Outputs(heads={"cls": Head(logits, target, kind="categorical")}, features={"stage2": mid})


def _method(**overrides: object) -> nn.Module:
    cls = get_method("uskd")
    probe = _student(torch.zeros(B, K), torch.tensor(Y), torch.zeros(B, C, 2, 2))
    return cls(make_config(cls.Config, overrides), MethodContext(probe, None, B, 1)).double()


def _weak_by_hand(method: nn.Module, mid: torch.Tensor) -> list[list[float]]:
    """The weak Linear on the spatially averaged feature, in plain Python."""
    weight, bias = rows(method.weak["cls"].weight), method.weak["cls"].bias.tolist()
    pooled = [[sum(cell) / len(cell) for cell in sample] for sample in mid.flatten(2).tolist()]
    return [[sum(w * x for w, x in zip(row, p, strict=True)) + b for row, b in zip(weight, bias, strict=True)]
            for p in pooled]


@pytest.mark.parametrize("rank", ["official", "paper"])
def test_a_mixup_target_takes_the_official_two_label_path(rank: str) -> None:
    method = _method(rank=rank, alpha=0.3, beta=0.2, mu=0.05)
    z, mid, soft = 2 * _randn(B, K, seed=0), _randn(B, C, 2, 2, seed=1), _mixup()
    terms = method.loss(_student(z, soft, mid), None, 0.0, RunState(0, 1, 0, 1))
    weak = _weak_by_hand(method, mid)
    two = _uskd_reference(rows(z), weak, [[a, b] for a, b in zip(Y, OTHER, strict=True)],
                          [[LAM, 1 - LAM]] * B, [[0.9 * v + 0.1 / K for v in r] for r in rows(soft)], rank)
    for key, weight in (("target", 0.3), ("non_target", 0.2), ("weak", 0.05)):
        value = float(terms[f"uskd_{key}/cls"].detach())
        assert math.isclose(value, weight * two[key], rel_tol=0, abs_tol=1e-12), (key, value, two[key])
    argmax = _uskd_reference(rows(z), weak, [[a] for a in Y], [[1.0]] * B,
                             [[0.9 * (i == a) + 0.1 / K for i in range(K)] for a in Y], rank)
    assert all(abs(two[k] - argmax[k]) > 1e-3 for k in two)  # what the method computed before


def test_class_index_targets_are_unchanged() -> None:
    method = _method()
    z, mid = 2 * _randn(B, K, seed=2), _randn(B, C, 2, 2, seed=3)
    terms = method.loss(_student(z, torch.tensor(Y), mid), None, 0.0, RunState(0, 1, 0, 1))
    one = _uskd_reference(rows(z), _weak_by_hand(method, mid), [[a] for a in Y], [[1.0]] * B,
                          [[0.9 * (i == a) + 0.1 / K for i in range(K)] for a in Y], "official")
    for key in one:
        assert math.isclose(float(terms[f"uskd_{key}/cls"].detach()), 0.1 * one[key], rel_tol=0, abs_tol=1e-12)


def test_no_gradient_into_the_soft_target_and_finite_gradients_elsewhere() -> None:
    method = _method()
    z = (2 * _randn(B, K, seed=4)).requires_grad_(True)
    mid = _randn(B, C, 2, 2, seed=5).requires_grad_(True)
    soft = _mixup().requires_grad_(True)
    terms = method.loss(_student(z, soft, mid), None, 0.0, RunState(0, 1, 0, 1))
    sum(terms.values()).backward()
    assert soft.grad is None
    for grad in (z.grad, mid.grad, method.weak["cls"].weight.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.any()
    with pytest.raises(ValueError, match="needs targets"):
        method.loss(_student(z.detach(), None, mid.detach()), None, 0.0, RunState(0, 1, 0, 1))  # type: ignore[arg-type]
