"""OFA-KD's loss (kdbench.losses.ofa) against a float64 hand computation, and its properties: not
zero where student and teacher agree, but stationary where σ(z_S/T) = w/Σw; no gradient into the
teacher; masked positions inert."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdbench.losses import ofa
from tests.losses.lossref import close, entropy, flat, log_softmax, logit_case, rows, scaled, softmax, valid_mean

K = 5


@pytest.fixture
def data() -> dict[str, torch.Tensor]:
    """(2, 3, K) float64 logits with a mask: six positions, four of them valid."""
    return logit_case(K)



def _weights(t: list[float], y: int, eps: float, temp: float) -> list[float]:
    """w_c = (p_T,c + 1[c = y])^ε − 1[c = y], one position, by hand."""
    p = softmax(scaled(t, 1 / temp))
    return [(pc + 1.0) ** eps - 1.0 if c == y else pc**eps for c, pc in enumerate(p)]


def _hand(data: dict[str, torch.Tensor], eps: float, temp: float) -> list[float]:
    out = []
    for s, t, y in zip(rows(data["s"]), rows(data["t"]), flat(data["y"]), strict=True):
        w = _weights(t, y, eps, temp)
        log_p = log_softmax(scaled(s, 1 / temp))
        total = 0.0
        for c in range(K):
            total -= w[c] * log_p[c]
        out.append(total)
    return out


@pytest.mark.parametrize(("eps", "temp"), [(1.0, 1.0), (1.5, 1.0), (1.5, 2.0), (0.7, 3.0)])
def test_ofa_value(data, eps, temp):
    per = _hand(data, eps, temp)
    close(ofa(data["s"], data["t"], data["y"], eps, temp, data["mask"]), valid_mean(per, flat(data["mask"])))
    close(ofa(data["s"], data["t"], data["y"], eps, temp), sum(per) / len(per))


def test_ofa_at_eps_one_is_the_soft_cross_entropy_towards_the_teacher(data):
    """At ε = 1, w = p_T: L = H(p_T, p_S), no target information added and no T² factor."""
    temp = 2.0
    per = [-sum(pt * lq for pt, lq in zip(softmax(scaled(t, 1 / temp)), log_softmax(scaled(s, 1 / temp)),
                                           strict=True))
           for s, t in zip(rows(data["s"]), rows(data["t"]), strict=True)]
    close(ofa(data["s"], data["t"], data["y"], 1.0, temp), sum(per) / len(per))


def test_ofa_is_the_teachers_entropy_not_zero_at_equality_and_stationary_there_at_eps_one(data):
    temp = 2.0
    s = data["t"].clone().requires_grad_(True)
    loss = ofa(s, data["t"], data["y"], 1.0, temp)
    expected = [entropy(softmax(scaled(t, 1 / temp))) for t in rows(data["t"])]
    close(loss, sum(expected) / len(expected))
    assert float(loss.detach()) > 0.1
    (grad,) = torch.autograd.grad(loss, s)
    assert float(grad.abs().max()) < 1e-12


def test_ofa_with_eps_above_one_is_stationary_at_the_enhanced_target_not_at_the_teacher(data):
    """For ε ≠ 1 the minimiser is σ(z_S/T) = w/Σw (Gibbs): z_S = T·log w has zero gradient, and
    z_S = z_T does not; there the gradient raises the target logit (target enhancement)."""
    eps, temp = 1.5, 2.0
    w = np.array([_weights(t, y, eps, temp) for t, y in zip(rows(data["t"]), flat(data["y"]), strict=True)])
    at_w = torch.tensor(temp * np.log(w), dtype=torch.float64).reshape(data["t"].shape).requires_grad_(True)
    (grad,) = torch.autograd.grad(ofa(at_w, data["t"], data["y"], eps, temp), at_w)
    assert float(grad.abs().max()) < 1e-12
    at_t = data["t"].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(ofa(at_t, data["t"], data["y"], eps, temp), at_t)
    target_grad = grad.gather(-1, data["y"].unsqueeze(-1))
    assert bool((target_grad < 0).all())


def test_ofa_sends_no_gradient_into_the_teacher(data):
    s = data["s"].clone().requires_grad_(True)
    t = data["t"].clone().requires_grad_(True)
    ofa(s, t, data["y"], 1.5, 2.0, data["mask"]).backward()
    assert t.grad is None
    assert s.grad is not None and float(s.grad.abs().sum()) > 0


def test_ofa_masked_positions_change_nothing(data):
    mask = data["mask"]
    base = ofa(data["s"], data["t"], data["y"], 1.5, 2.0, mask)
    s, t, y = data["s"].clone(), data["t"].clone(), data["y"].clone()
    s[~mask] = float("nan")
    t[~mask] = float("nan")
    y[~mask] = -100  # padding's ignore index
    assert torch.equal(ofa(s, t, y, 1.5, 2.0, mask), base)
    s[~mask], t[~mask] = 1e6, -1e6  # finite garbage: no gradient reaches the masked positions either
    s.requires_grad_(True)
    value = ofa(s, t, y, 1.5, 2.0, mask)
    assert torch.equal(value, base)
    value.backward()
    assert s.grad is not None and bool((s.grad[~mask] == 0).all()) and float(s.grad[mask].abs().sum()) > 0


def test_ofa_reads_a_soft_target_as_its_argmax(data):
    soft = torch.nn.functional.one_hot(data["y"], K).double() * 0.7 + 0.06
    hard = ofa(data["s"], data["t"], data["y"], 1.5, 1.0)
    torch.testing.assert_close(ofa(data["s"], data["t"], soft, 1.5, 1.0), hard, rtol=0, atol=0)


def test_ofa_refuses_a_non_positive_eps(data):
    with pytest.raises(ValueError, match="eps must be > 0"):
        ofa(data["s"], data["t"], data["y"], 0.0)
