"""ND (KD++) as the official WangYZ1608/Knowledge-Distillation-via-ND: the KD warm-up weight
min(1, e/W) with 0-based epochs, the projector's initialisation, and the method's gradients."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kdbench.methods import get_method
from kdbench.methods.base import MethodContext, RunState
from kdbench.outputs import Head, Outputs
from tests.losses.lossref import kl, rows, scaled, softmax

B, K, DS, DT = 4, 3, 5, 6


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _outputs(logits: torch.Tensor, emb: torch.Tensor, target: torch.Tensor) -> Outputs:
    return Outputs(heads={"cls": Head(logits, target, kind="categorical")}, features={"embedding": emb})


def _pair(ds: int = DS) -> tuple[Outputs, Outputs]:
    target = torch.tensor([0, 1, 2, 1])
    return (_outputs(_randn(B, K, seed=0), _randn(B, ds, seed=1), target),
            _outputs(_randn(B, K, seed=2), _randn(B, DT, seed=3), target))


def _method(student: Outputs, teacher: Outputs, **overrides: object) -> nn.Module:
    cls = get_method("nd")
    method = cls(cls.Config(**overrides), MethodContext(student, teacher, B, 30)).double()
    method.class_means.copy_(_randn(K, DT, seed=4))  # as `prepare` would from a teacher pass
    return method


def _kd_by_hand(s: torch.Tensor, t: torch.Tensor, temp: float) -> float:
    per = [temp**2 * kl(softmax(scaled(b, 1 / temp)), softmax(scaled(a, 1 / temp)))
           for a, b in zip(rows(s), rows(t), strict=True)]
    return sum(per) / len(per)


@pytest.mark.parametrize(("warmup", "weights"), [
    (4, [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]),  # official: min(1, epoch/warm_up), epoch from 0
    (1, [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]),
    (0, [1.0] * 7),  # no warm-up
])
def test_kd_warm_up_is_the_official_min_one_epoch_over_w_from_epoch_zero(warmup, weights) -> None:
    student, teacher = _pair(ds=DT)
    method = _method(student, teacher, warmup_epochs=warmup)
    kd = _kd_by_hand(student.heads["cls"].logits, teacher.heads["cls"].logits, 4.0)
    for epoch, w in enumerate(weights):
        value = float(method.loss(student, teacher, 0.0, RunState(epoch, 30, epoch * 10, 300))["kd"])
        assert math.isclose(value, w * 3.5 * kd, rel_tol=0, abs_tol=1e-10), (epoch, value, w)


def test_projector_is_initialised_as_the_official_embtrans() -> None:
    student, teacher = _pair()
    torch.manual_seed(0)
    method = _method(student, teacher)
    torch.manual_seed(0)
    default = nn.Linear(DS, DT)  # the official leaves the Linear weight at PyTorch's default
    bn, dropout, linear = method.project
    assert isinstance(bn, nn.BatchNorm1d) and isinstance(dropout, nn.Dropout) and dropout.p == 0.5
    assert torch.equal(bn.weight, torch.ones(DS, dtype=torch.float64))
    assert torch.equal(bn.bias, torch.zeros(DS, dtype=torch.float64))
    assert torch.equal(linear.bias, torch.zeros(DT, dtype=torch.float64))
    assert torch.equal(linear.weight, default.weight.double())
    assert isinstance(_method(*_pair(ds=DT)).project, nn.Identity)  # equal sizes: no projector


def test_no_gradient_into_the_teacher_and_kd_zero_at_equal_logits() -> None:
    student, teacher = _pair()
    s_logits = student.heads["cls"].logits.clone().requires_grad_(True)
    s_emb = student.features["embedding"].clone().requires_grad_(True)
    t_logits = teacher.heads["cls"].logits.clone().requires_grad_(True)
    t_emb = teacher.features["embedding"].clone().requires_grad_(True)
    target = student.heads["cls"].target
    student, teacher = _outputs(s_logits, s_emb, target), _outputs(t_logits, t_emb, target)
    method = _method(student, teacher)
    terms = method.loss(student, teacher, 0.0, RunState(25, 30, 250, 300))
    sum(terms.values()).backward()
    assert t_logits.grad is None and t_emb.grad is None and method.class_means.grad is None
    assert s_logits.grad is not None and s_emb.grad is not None and torch.isfinite(s_emb.grad).all()
    same = _outputs(t_logits.detach(), s_emb.detach(), target)
    assert float(method.loss(same, teacher, 0.0, RunState(25, 30, 250, 300))["kd"]) == pytest.approx(0.0, abs=1e-12)
