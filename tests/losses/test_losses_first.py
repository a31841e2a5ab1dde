"""FIRST's top-k loss (kdbench.losses.first_topk_kl) against a float64 hand computation, and its
properties: zero where the student's renormalised top-k equals the teacher's, no gradient into the
teacher, masked positions inert, the teacher's tokens outside its top-k ignored."""

from __future__ import annotations

import math

import pytest
import torch

from kdbench.losses import first_topk_kl
from tests.losses.lossref import close, flat, rows, softmax

V = 9


@pytest.fixture
def data() -> dict[str, torch.Tensor]:
    """(2, 3, V) float64 logits and a mask: two sequences of three tokens, four valid."""
    g = torch.Generator().manual_seed(3)
    return {
        "s": torch.randn(2, 3, V, generator=g, dtype=torch.float64) * 2,
        "t": torch.randn(2, 3, V, generator=g, dtype=torch.float64) * 2,
        "mask": torch.tensor([[True, False, True], [True, True, False]]),
    }


def _position(s: list[float], t: list[float], k: int, tau: float, eps: float) -> float:
    """One position by hand: the teacher's top-k ids, τ-rescaled, both sides (p + ε)/Σ, forward KL."""
    p_t, p_s = softmax(t), softmax(s)
    ids = sorted(range(V), key=lambda i: -p_t[i])[:k]
    powered = [p_t[i] ** (1 / tau) for i in ids]
    q = [v / sum(powered) for v in powered]
    t_norm = [(v + eps) / sum(x + eps for x in q) for v in q]
    s_top = [p_s[i] for i in ids]
    s_norm = [(v + eps) / sum(x + eps for x in s_top) for v in s_top]
    return sum(a * (math.log(a) - math.log(b)) for a, b in zip(t_norm, s_norm, strict=True))


@pytest.mark.parametrize(("k", "tau", "eps"), [(5, 1.0, 1e-6), (3, 1.0, 1e-6), (5, 2.0, 1e-6), (5, 0.5, 1e-3)])
def test_first_value_sums_positions_and_divides_by_the_sequences(data, k, tau, eps):
    per = [_position(s, t, k, tau, eps) for s, t in zip(rows(data["s"]), rows(data["t"]), strict=True)]
    valid = flat(data["mask"])
    close(first_topk_kl(data["s"], data["t"], k, tau, eps, data["mask"]),
          sum(p for p, ok in zip(per, valid, strict=True) if ok) / 2)
    close(first_topk_kl(data["s"], data["t"], k, tau, eps), sum(per) / 2)


def test_first_is_zero_where_the_top_k_slices_agree_even_if_the_rest_differs(data):
    """Only the ratios on the teacher's top-k matter: a student equal to the teacher there and
    arbitrary elsewhere (its other logits moved) scores zero, at τ = 1."""
    t = data["t"]
    ids = t.topk(5, dim=-1).indices
    s = torch.full_like(t, -3.0).scatter(-1, ids, t.gather(-1, ids) + 1.7)
    assert float(first_topk_kl(s, t).abs()) < 1e-12
    assert float(first_topk_kl(data["s"], t)) > 0.01


def test_first_no_gradient_into_the_teacher_and_masked_positions_inert(data):
    t = data["t"].clone().requires_grad_(True)
    s = data["s"].clone().requires_grad_(True)
    loss = first_topk_kl(s, t, mask=data["mask"])
    loss.backward()
    assert t.grad is None
    assert s.grad is not None
    assert float(s.grad[~data["mask"]].abs().max()) == 0.0
    moved = data["s"].clone()
    moved[~data["mask"]] += 5.0
    close(first_topk_kl(moved, data["t"], mask=data["mask"]), float(loss.detach()))


def test_first_refuses_k_outside_the_vocabulary(data):
    with pytest.raises(ValueError, match="k must be between 1 and the vocabulary size 9"):
        first_topk_kl(data["s"], data["t"], k=10)
