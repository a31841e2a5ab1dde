"""Hand-computed values and properties of GTSD's loss (Borup & Andersen, NeurIPS 2021): squared errors
between probabilities, to the one-hot labels and to the previous generation's softmax, weighted α and
1 − α (kdbench.losses.self_distill.gtsd, probability_squared_error)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdbench.losses import gtsd, probability_squared_error
from tests.losses.lossref import close, flat, logit_case, rows, softmax, valid_mean

K = 5
ALPHA = 0.3


def _se(p: list[float], q: list[float]) -> float:
    """(1/K)·Σ_k (p_k − q_k)² of one position."""
    return sum((a - b) ** 2 for a, b in zip(p, q, strict=True)) / len(p)


def _onehot(index: int) -> list[float]:
    return [1.0 if k == index else 0.0 for k in range(K)]


@pytest.fixture
def case() -> dict[str, torch.Tensor]:
    return logit_case(K)


def test_both_terms_by_hand(case: dict[str, torch.Tensor]) -> None:
    labels, teacher = gtsd(case["s"], case["y"], case["t"], ALPHA, case["mask"])
    assert teacher is not None
    p = [softmax(z) for z in rows(case["s"])]
    q = [softmax(z) for z in rows(case["t"])]
    e_labels = [_se(pi, _onehot(int(y))) for pi, y in zip(p, flat(case["y"]), strict=True)]
    e_teacher = [_se(pi, qi) for pi, qi in zip(p, q, strict=True)]
    valid = flat(case["mask"])
    close(labels, ALPHA * valid_mean(e_labels, valid))
    close(teacher, (1 - ALPHA) * valid_mean(e_teacher, valid))


def test_generation_zero_is_the_label_term_at_weight_one(case: dict[str, torch.Tensor]) -> None:
    labels, teacher = gtsd(case["s"], case["y"], None, ALPHA, case["mask"])
    assert teacher is None
    p = [softmax(z) for z in rows(case["s"])]
    e = [_se(pi, _onehot(int(y))) for pi, y in zip(p, flat(case["y"]), strict=True)]
    close(labels, valid_mean(e, flat(case["mask"])))


def test_without_mask_it_is_the_official_mse_of_softmaxes(case: dict[str, torch.Tensor]) -> None:
    """F.mse_loss(F.softmax(pred, dim=1), target): the mean over samples and classes."""
    s, t, y = case["s"].reshape(-1, K), case["t"].reshape(-1, K), case["y"].reshape(-1)
    labels, teacher = gtsd(s, y, t, ALPHA)
    assert teacher is not None
    p = F.softmax(s, dim=1)
    close(labels, ALPHA * float(F.mse_loss(p, F.one_hot(y, K).double())))
    close(teacher, (1 - ALPHA) * float(F.mse_loss(p, F.softmax(t, dim=1))))


def test_a_label_distribution_is_the_target_and_weights_scale_positions(case: dict[str, torch.Tensor]) -> None:
    g = torch.Generator().manual_seed(3)
    target = torch.softmax(torch.randn(2, 3, K, generator=g, dtype=torch.float64), -1)
    weight = torch.rand(2, 3, generator=g, dtype=torch.float64) * 2
    labels, teacher = gtsd(case["s"], target, case["t"], ALPHA, case["mask"], weight)
    assert teacher is not None
    p = [softmax(z) for z in rows(case["s"])]
    q = [softmax(z) for z in rows(case["t"])]
    w, valid = flat(weight), flat(case["mask"])
    close(labels, ALPHA * valid_mean([wi * _se(pi, yi) for wi, pi, yi in zip(w, p, rows(target), strict=True)],
                                     valid))
    close(teacher, (1 - ALPHA) * valid_mean([wi * _se(pi, qi) for wi, pi, qi in zip(w, p, q, strict=True)], valid))


def test_alpha_one_is_the_label_loss_alone_and_alpha_zero_the_teacher_alone(case: dict[str, torch.Tensor]) -> None:
    alone, _ = gtsd(case["s"], case["y"], None, ALPHA, case["mask"])
    labels, teacher = gtsd(case["s"], case["y"], case["t"], 1.0, case["mask"])
    assert teacher is not None and float(teacher) == 0.0
    assert torch.equal(labels, alone)
    labels, teacher = gtsd(case["s"], case["y"], case["t"], 0.0, case["mask"])
    assert float(labels) == 0.0 and teacher is not None
    assert torch.equal(teacher, probability_squared_error(case["s"], torch.softmax(case["t"], -1), case["mask"]))


def test_the_teacher_term_is_zero_where_the_student_equals_the_teacher(case: dict[str, torch.Tensor]) -> None:
    labels, teacher = gtsd(case["s"], case["y"], case["s"].clone(), ALPHA, case["mask"])
    assert teacher is not None and float(teacher) == 0.0 and float(labels) > 0
    _, shifted = gtsd(case["s"], case["y"], case["s"] + 2.0, ALPHA)
    assert shifted is not None and float(shifted) < 1e-30  # a shift of the logits: the same softmax


def test_the_sum_is_the_squared_error_to_the_alpha_mixture_plus_a_constant(case: dict[str, torch.Tensor]) -> None:
    """α(p − y)² + (1 − α)(p − q)² = (p − (αy + (1 − α)q))² + α(1 − α)(y − q)²: the paper's weighted target."""
    labels, teacher = gtsd(case["s"], case["y"], case["t"], ALPHA, case["mask"])
    assert teacher is not None
    y = F.one_hot(case["y"], K).double()
    q = torch.softmax(case["t"], -1)
    mixture = probability_squared_error(case["s"], ALPHA * y + (1 - ALPHA) * q, case["mask"])
    constant = ALPHA * (1 - ALPHA) * ((y - q) ** 2).mean(-1)[case["mask"]].mean()
    torch.testing.assert_close(labels + teacher, mixture + constant, rtol=0, atol=1e-14)


def test_the_students_gradient_by_hand_and_none_into_the_teacher(case: dict[str, torch.Tensor]) -> None:
    """∂/∂z_j (1/K)Σ_k (p_k − q_k)² = (2/K)·Σ_k (p_k − q_k)·p_k·(δ_kj − p_j), per position, /valid."""
    s = case["s"].clone().requires_grad_(True)
    t = case["t"].clone().requires_grad_(True)
    _, teacher = gtsd(s, case["y"], t, 0.0, case["mask"])
    assert teacher is not None
    teacher.backward()
    assert t.grad is None and s.grad is not None
    valid = flat(case["mask"])
    n = sum(valid)
    for row, (zs, zt, ok) in enumerate(zip(rows(case["s"]), rows(case["t"]), valid, strict=True)):
        p, q = softmax(zs), softmax(zt)
        hand = [2 / K * sum((p[k] - q[k]) * p[k] * ((k == j) - p[j]) for k in range(K)) / n if ok else 0.0
                for j in range(K)]
        got = s.grad.reshape(-1, K)[row].tolist()
        assert all(abs(a - b) < 1e-12 for a, b in zip(got, hand, strict=True)), (row, got, hand)
