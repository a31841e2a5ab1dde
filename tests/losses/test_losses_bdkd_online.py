"""Hand-computed values and properties of BD-KD's online-teacher loss, `bdkd_teacher`:
T²·mean_valid(KL(sg(p_S) ‖ p_T)), trained into the teacher only."""

from __future__ import annotations

import pytest
import torch

from kdbench.losses import bdkd, bdkd_teacher
from tests.losses.lossref import close, flat, kl, logit_case, rows, scaled, softmax, valid_mean

K = 5


@pytest.fixture
def data() -> dict[str, torch.Tensor]:
    """(2, 3, K) float64 logits with a mask, i.e. six positions, four of them valid."""
    return logit_case(K)


@pytest.mark.parametrize("temp", [1.0, 2.0, 4.0])
def test_bdkd_teacher_value(data, temp):
    per = [temp**2 * kl(softmax(scaled(s, 1 / temp)), softmax(scaled(t, 1 / temp)))
           for s, t in zip(rows(data["s"]), rows(data["t"]), strict=True)]
    # the teacher's logits come first: it is the model this loss trains
    close(bdkd_teacher(data["t"], data["s"], temp, data["mask"]), valid_mean(per, flat(data["mask"])))
    close(bdkd_teacher(data["t"], data["s"], temp), sum(per) / len(per))


def test_bdkd_teacher_gradient_is_t_times_p_teacher_minus_p_student(data):
    """∂/∂z_T of T²·KL(p_S ‖ σ(z_T/T)) is T·(p_T − p_S) per valid position, divided by their count."""
    temp = 2.0
    t = data["t"].clone().requires_grad_(True)
    bdkd_teacher(t, data["s"], temp, data["mask"]).backward()
    valid = flat(data["mask"])
    expected = []
    for s_row, t_row, ok in zip(rows(data["s"]), rows(data["t"]), valid, strict=True):
        ps, pt = softmax(scaled(s_row, 1 / temp)), softmax(scaled(t_row, 1 / temp))
        expected.append([temp * (b - a) / sum(valid) if ok else 0.0 for a, b in zip(ps, pt, strict=True)])
    grad = torch.tensor(expected, dtype=torch.float64).reshape(t.shape)
    torch.testing.assert_close(t.grad, grad, rtol=0, atol=1e-12)


def test_bdkd_teacher_trains_the_teacher_only(data):
    s = data["s"].clone().requires_grad_(True)
    t = data["t"].clone().requires_grad_(True)
    bdkd_teacher(t, s, 2.0, data["mask"]).backward()
    assert s.grad is None  # the student's logits are detached inside
    assert t.grad is not None and t.grad.abs().sum() > 0


def test_bdkd_teacher_is_zero_with_zero_gradient_at_equality(data):
    t = data["s"].clone().requires_grad_(True)
    value = bdkd_teacher(t, data["s"], 3.0, data["mask"])
    assert float(value.detach()) == pytest.approx(0.0, abs=1e-12)
    value.backward()
    torch.testing.assert_close(t.grad, torch.zeros_like(t), rtol=0, atol=1e-12)
    assert float(bdkd_teacher(data["t"], data["s"], 3.0)) > 0


def test_bdkd_teacher_is_the_reverse_kl_of_the_students_balanced_loss():
    """At equal entropy the student's `bdkd` weighs both KLs 1: bdkd = T²·(KL(p_T‖p_S) + KL(p_S‖p_T)), whose
    reverse half is `bdkd_teacher` (the same KL, p_S first), the forward half KD's KL."""
    s = torch.tensor([[1.0, 2.0, 0.5, -1.0]], dtype=torch.float64)
    t = s[:, [1, 0, 3, 2]]  # a permutation: the same entropy
    forward = bdkd_teacher(s, t, 2.0)  # KL(p_T ‖ p_S): t as the fixed distribution
    torch.testing.assert_close(bdkd(s, t, 2.0), forward + bdkd_teacher(t, s, 2.0), rtol=0, atol=1e-12)
