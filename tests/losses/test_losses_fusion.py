"""TGeo-KD's trilateral state and fused loss (kdbench/losses/fusion.py) against float64 hand
arithmetic, and their properties: no teacher gradient, masked positions inert."""

from __future__ import annotations

import math

import pytest
import torch

from kdbench.losses import fused_kd, kd, trilateral_relations
from tests.losses.lossref import flat, kl, log_softmax, rows, scaled, softmax, valid_mean

B, K = 5, 4


def _randn(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    s, t = _randn(B, K, seed=0, scale=2.0), _randn(B, K, seed=1, scale=3.0)
    y = torch.tensor([0, 3, 1, 3, 2])
    protos = torch.softmax(_randn(K, K, seed=2, scale=2.0), dim=-1)
    return s, t, y, protos


def test_trilateral_state_by_hand() -> None:
    s, t, y, protos = _inputs()
    got = rows(trilateral_relations(s, t, y, protos))
    for i, (zs, zt, label) in enumerate(zip(rows(s), rows(t), flat(y), strict=True)):
        ps, pt = softmax(zs), softmax(zt)
        g = [1.0 if k == label else 0.0 for k in range(K)]
        tb = protos[label].tolist()
        sq = lambda a, b: [(u - v) ** 2 for u, v in zip(a, b, strict=True)]  # noqa: E731
        want = ps + pt + g + tb + sq(tb, ps) + sq(g, ps) + sq(pt, ps) + sq(pt, g) + sq(tb, g)
        assert len(got[i]) == 9 * K
        assert all(math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15) for a, b in zip(got[i], want, strict=True)), i


@pytest.mark.parametrize("temp", [1.0, 1.5, 4.0])
def test_fused_loss_by_hand(temp: float) -> None:
    s, t, y, _ = _inputs()
    alpha = torch.tensor([0.0, 0.25, 0.5, 0.9, 1.0], dtype=torch.float64)
    value = float(fused_kd(s, t, y, alpha, temp))
    per = []
    for zs, zt, label, a in zip(rows(s), rows(t), flat(y), flat(alpha), strict=True):
        kd_i = temp**2 * kl(softmax(scaled(zt, 1 / temp)), softmax(scaled(zs, 1 / temp)))
        ce_i = -log_softmax(zs)[label]
        per.append(a * kd_i + (1 - a) * ce_i)
    assert math.isclose(value, sum(per) / B, rel_tol=1e-12)


def test_ratio_one_is_kd_and_ratio_zero_is_the_hard_label_ce() -> None:
    s, t, y, _ = _inputs()
    ones, zeros = torch.ones(B, dtype=torch.float64), torch.zeros(B, dtype=torch.float64)
    assert torch.allclose(fused_kd(s, t, y, ones, 2.0), kd(s, t, 2.0), rtol=1e-12, atol=0)
    assert torch.allclose(fused_kd(s, t, y, zeros, 2.0), torch.nn.functional.cross_entropy(s, y), rtol=1e-12, atol=0)
    # zero at equality where the formula says so: α = 1 and z_S = z_T
    assert float(fused_kd(t, t, y, ones, 2.0)) == pytest.approx(0.0, abs=1e-12)


def test_no_gradient_into_the_teacher_or_the_prototypes() -> None:
    s, t, y, protos = _inputs()
    s, t, protos = s.requires_grad_(True), t.requires_grad_(True), protos.requires_grad_(True)
    alpha = torch.full((B,), 0.4, dtype=torch.float64, requires_grad=True)
    (fused_kd(s, t, y, alpha, 2.0) + trilateral_relations(s, t, y, protos).sum()).backward()
    assert t.grad is None and protos.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert alpha.grad is not None and alpha.grad.abs().sum() > 0  # α is not detached: a network learns through it


MASK = torch.tensor([[True, False, True], [False, True, True]])


def _masked_inputs(garbage: float | None) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(5)
    s = torch.randn(2, 3, K, generator=g, dtype=torch.float64) * 2
    t = torch.randn(2, 3, K, generator=g, dtype=torch.float64) * 2
    a = torch.rand(2, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, K, (2, 3), generator=g)
    if garbage is not None:
        s[~MASK], t[~MASK], a[~MASK] = garbage, -garbage, garbage
        y[~MASK] = -100
    return s.requires_grad_(True), t, a.requires_grad_(True), y


@pytest.mark.parametrize("garbage", [float("nan"), 1e6])
def test_masked_positions_change_neither_value_nor_gradient(garbage: float) -> None:
    protos = torch.softmax(_randn(K, K, seed=7), dim=-1)
    values, grads, states = [], [], []
    for g in (None, garbage):
        s, t, a, y = _masked_inputs(g)
        loss = fused_kd(s, t, y, a, 2.0, MASK)
        loss.backward()
        assert s.grad is not None and a.grad is not None
        values.append(loss.detach())
        grads.append((s.grad[MASK], a.grad[MASK], s.grad[~MASK], a.grad[~MASK]))
        states.append(trilateral_relations(s, t, y, protos, MASK)[MASK])
        assert torch.isfinite(trilateral_relations(s, t, y, protos, MASK)).all()
    assert torch.isfinite(values[1]) and torch.equal(values[0], values[1])
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
    assert not grads[1][2].any() and not grads[1][3].any()  # nothing reaches a masked position
    assert torch.equal(states[0], states[1])


def test_masked_loss_is_the_loss_on_the_valid_positions() -> None:
    s, t, a, y = _masked_inputs(None)
    s, a = s.detach(), a.detach()
    whole = float(fused_kd(s, t, y, a, 2.0, MASK))
    sub = float(fused_kd(s[MASK], t[MASK], y[MASK], a[MASK], 2.0))
    per = [float(fused_kd(s[i, j][None], t[i, j][None], y[i, j][None], a[i, j][None], 2.0))
           for i in range(2) for j in range(3)]
    assert math.isclose(whole, sub, rel_tol=1e-12)
    assert math.isclose(whole, valid_mean(per, flat(MASK)), rel_tol=1e-12)
