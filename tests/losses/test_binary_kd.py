"""BCKD's per-class binary distillation (kdbench.losses.binary_kd), which `kd` applies to heads
with an independent sigmoid per class, checked by hand in float64 (issue #16, item 1)."""

from __future__ import annotations

import math

import pytest
import torch

from kdbench.losses import binary_kd
from kdbench.methods import get_method
from kdbench.methods.base import MethodContext, RunState, make_config
from kdbench.outputs import Head, Outputs
from tests.losses.lossref import rows, sigmoid

F64 = torch.float64


def _by_hand(s_row: list[float], t_row: list[float], beta: float) -> float:
    """Σ_c −[p_T log p_S + (1 − p_T) log(1 − p_S)]·|p_T − p_S|^β with p = sigmoid(z)."""
    total = 0.0
    for s, t in zip(s_row, t_row, strict=True):
        p_s, p_t = sigmoid(s), sigmoid(t)
        bce = -(p_t * math.log(p_s) + (1 - p_t) * math.log(1 - p_s))
        total += bce * abs(p_t - p_s) ** beta
    return total


def _logits(seed: int, scale: float = 2.0) -> torch.Tensor:
    return scale * torch.randn(2, 3, 4, dtype=F64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("beta", [1.0, 2.0])
def test_binary_kd_by_hand(beta: float) -> None:
    z_s, z_t = _logits(0), _logits(1)
    mask = torch.tensor([[True, False, True], [True, True, False]])
    per = [_by_hand(s, t, beta) for s, t in zip(rows(z_s), rows(z_t), strict=True)]
    valid = mask.flatten().tolist()
    expected = sum(v for v, ok in zip(per, valid, strict=True) if ok) / sum(valid)
    assert math.isclose(float(binary_kd(z_s, z_t, beta, mask)), expected, rel_tol=0, abs_tol=1e-12)
    assert math.isclose(float(binary_kd(z_s, z_t, beta)), sum(per) / len(per), rel_tol=0, abs_tol=1e-12)


def test_binary_kd_is_zero_at_the_teacher_and_sends_no_gradient_to_it() -> None:
    z_t = _logits(2).requires_grad_(True)
    assert float(binary_kd(z_t.detach().clone(), z_t)) == pytest.approx(0.0, abs=1e-15)
    z_s = _logits(3).requires_grad_(True)
    binary_kd(z_s, z_t).backward()
    assert z_t.grad is None and z_s.grad is not None and torch.isfinite(z_s.grad).all()


def _binary(z: torch.Tensor, mask: torch.Tensor | None = None) -> Outputs:
    return Outputs(heads={"cls": Head(z, torch.zeros(2, 3, dtype=torch.long), mask=mask, kind="binary")})


def test_kd_on_a_binary_head_is_w_kd_times_bckds_loss_and_never_a_softmax() -> None:
    z_s, z_t = _logits(4), _logits(5)
    mask = torch.tensor([[True, True, False], [False, True, True]])
    cls = get_method("kd")
    config = make_config(cls.Config, {"temperature": 4.0, "kd_weight": 0.5})
    student, teacher = _binary(z_s), _binary(z_t, mask)
    method = cls(config, MethodContext(student, teacher, 2, 1))
    value = float(method.loss(student, teacher, 0.0, RunState(0, 1, 0, 1))["kd/cls"])
    per = [_by_hand(s, t, 1.0) for s, t in zip(rows(z_s), rows(z_t), strict=True)]
    kept = [v for v, ok in zip(per, mask.flatten().tolist(), strict=True) if ok]
    assert math.isclose(value, 0.5 * sum(kept) / len(kept), rel_tol=0, abs_tol=1e-12)  # no T, no T²
    # masked positions change nothing
    noisy_s, noisy_t = z_s.clone(), z_t.clone()
    noisy_s[~mask], noisy_t[~mask] = 50.0, -50.0
    again = method.loss(_binary(noisy_s), _binary(noisy_t, mask), 0.0, RunState(0, 1, 0, 1))["kd/cls"]
    assert float(again) == pytest.approx(value, abs=1e-12)
    assert method.head_names == {"cls"}  # its ce_weight scales the head's hard-label term
