"""Hand-computed values and properties of the logit losses: kd, dkd, nkd, taid, bdkd, DHKD."""

from __future__ import annotations

import math

import pytest
import torch

from kdbench.losses import bdkd, binary_kl_norm, dkd, kd, nkd, taid
from tests.losses.lossref import (
    close,
    entropy,
    flat,
    kl,
    log_softmax,
    logit_case,
    rows,
    scaled,
    sigmoid,
    softmax,
    valid_mean,
    without,
)

K = 5
TOL = dict(rtol=0, atol=1e-10)


@pytest.fixture
def data() -> dict[str, torch.Tensor]:
    """(2, 3, K) float64 logits with a mask, i.e. six positions, four of them valid."""
    return logit_case(K)



def test_kd_value(data):
    temp = 3.0
    per = [
        temp**2 * kl(softmax(scaled(t, 1 / temp)), softmax(scaled(s, 1 / temp)))
        for s, t in zip(rows(data["s"]), rows(data["t"]), strict=True)
    ]
    close(kd(data["s"], data["t"], temp, data["mask"]), valid_mean(per, flat(data["mask"])))
    close(kd(data["s"], data["t"], temp), sum(per) / len(per))


def test_kd_temperature_squared_scaling(data):
    for temp in (1.0, 2.0, 4.0):
        scaled_value = kd(data["s"] / temp, data["t"] / temp, temperature=1.0)
        torch.testing.assert_close(kd(data["s"], data["t"], temp), temp**2 * scaled_value, **TOL)


def _dkd_parts(data, temp):
    tckd, nckd = [], []
    for s, t, y in zip(rows(data["s"]), rows(data["t"]), flat(data["y"]), strict=True):
        ps, pt = softmax(scaled(s, 1 / temp)), softmax(scaled(t, 1 / temp))
        bs = [ps[y], sum(without(ps, y))]
        bt = [pt[y], sum(without(pt, y))]
        tckd.append(temp**2 * kl(bt, bs))
        nckd.append(
            temp**2
            * kl(softmax(scaled(without(t, y), 1 / temp)), softmax(scaled(without(s, y), 1 / temp)))
        )
    return tckd, nckd


def test_dkd_equals_weighted_sum_of_hand_computed_parts(data):
    temp, valid = 4.0, flat(data["mask"])
    tckd, nckd = _dkd_parts(data, temp)
    args = (data["s"], data["t"], data["y"])
    close(
        dkd(*args, alpha=1.0, beta=0.0, temperature=temp, mask=data["mask"]),
        valid_mean(tckd, valid),
    )
    close(
        dkd(*args, alpha=0.0, beta=1.0, temperature=temp, mask=data["mask"]),
        valid_mean(nckd, valid),
    )
    combined = [1.0 * a + 8.0 * b for a, b in zip(tckd, nckd, strict=True)]
    close(dkd(*args, temperature=temp, mask=data["mask"]), valid_mean(combined, valid))


def _nkd_reference(data, lam, gamma):
    per = []
    for s, t, y in zip(rows(data["s"]), rows(data["t"]), flat(data["y"]), strict=True):
        loss_t = -softmax(t)[y] * log_softmax(s)[y]
        t_hat = softmax(scaled(without(t, y), 1 / lam))
        log_s_hat = log_softmax(scaled(without(s, y), 1 / lam))
        loss_non = -gamma * lam**2 * sum(a * b for a, b in zip(t_hat, log_s_hat, strict=True))
        per.append(loss_t + loss_non)
    return per


@pytest.mark.parametrize(("lam", "gamma"), [(1.0, 1.5), (3.0, 3.5)])
def test_nkd_value(data, lam, gamma):
    per = _nkd_reference(data, lam, gamma)
    value = nkd(data["s"], data["t"], data["y"], temperature=lam, gamma=gamma, mask=data["mask"])
    close(value, valid_mean(per, flat(data["mask"])))


def test_nkd_soft_target_uses_argmax(data):
    soft = torch.softmax(torch.randn(2, 3, K, dtype=torch.float64), dim=-1)
    data = dict(data, y=soft.argmax(-1))
    per = _nkd_reference(data, 1.0, 1.5)
    close(nkd(data["s"], data["t"], soft), sum(per) / len(per))


@pytest.mark.parametrize("t", [0.3, torch.tensor(0.7, dtype=torch.float64)])
def test_taid_value(data, t):
    tv = float(t)
    per = []
    for s, z in zip(rows(data["s"]), rows(data["t"]), strict=True):
        p = softmax([(1 - tv) * a + tv * b for a, b in zip(s, z, strict=True)])
        per.append(-sum(pi * li for pi, li in zip(p, log_softmax(s), strict=True)))
    close(taid(data["s"], data["t"], t, data["mask"]), valid_mean(per, flat(data["mask"])))


def test_taid_student_share_is_detached(data):
    """At t = 0 the target is sg(σ(z_S)): the gradient is ∂H(p, q)/∂z = q − p = 0."""
    s = data["s"].clone().requires_grad_(True)
    taid(s, data["t"], 0.0).backward()
    torch.testing.assert_close(s.grad, torch.zeros_like(s), rtol=0, atol=1e-12)


def _taid_reference(s_row, z_row, tv):
    """Per-position TAID by hand over the classes where the student's logit is finite."""
    keep = [k for k, a in enumerate(s_row) if math.isfinite(a)]
    s_kept, z_kept = [s_row[k] for k in keep], [z_row[k] for k in keep]
    p = softmax([(1 - tv) * a + tv * b for a, b in zip(s_kept, z_kept, strict=True)])
    return -sum(pi * li for pi, li in zip(p, log_softmax(s_kept), strict=True))


@pytest.mark.parametrize("t", [0.0, 0.3, 0.9])
def test_taid_minus_inf_student_logits_are_excluded_not_nan(data, t):
    """SakanaAI/TAID forward_kl zeroes the terms where the student's logit is infinite."""
    s = data["s"].clone()
    s[0, 0, 1] = s[1, 1, 3] = s[1, 1, 4] = float("-inf")  # e.g. classes masked out of a vocabulary
    s.requires_grad_(True)
    per = [_taid_reference(a, b, t) for a, b in zip(rows(s), rows(data["t"]), strict=True)]
    value = taid(s, data["t"], t, data["mask"])
    close(value.detach(), valid_mean(per, flat(data["mask"])))
    value.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()
    assert s.grad[0, 0, 1] == 0 and s.grad[1, 1, 3] == 0


def test_taid_at_t_one_with_minus_inf_student_logits_is_the_teachers_ce_over_finite_classes(data):
    """At t = 1 the student's share is 0 (no 0·(−∞)): the target is σ(z_T) over all classes."""
    s = data["s"].clone()
    s[0, 0, 2] = float("-inf")
    per = []
    for a, b in zip(rows(s), rows(data["t"]), strict=True):
        p = softmax(b)
        keep = [k for k, v in enumerate(a) if math.isfinite(v)]
        log_q = log_softmax([a[k] for k in keep])
        per.append(-sum(p[k] * lq for k, lq in zip(keep, log_q, strict=True)))
    close(taid(s, data["t"], 1.0), sum(per) / len(per))


@pytest.mark.parametrize("t", [0.0, 0.4, 1.0])
def test_taid_gives_no_gradient_when_the_teacher_equals_the_student(data, t):
    """z_T = z_S makes p_t = sg(σ(z_S)) for every t: ∂H(p, σ(z_S))/∂z_S = σ(z_S) − p = 0."""
    s = data["s"].clone().requires_grad_(True)
    taid(s, data["s"].clone(), t, data["mask"]).backward()
    torch.testing.assert_close(s.grad, torch.zeros_like(s), rtol=0, atol=1e-12)


def test_bdkd_value(data):
    temp, per = 2.0, []
    for s, t in zip(rows(data["s"]), rows(data["t"]), strict=True):
        ps, pt = softmax(scaled(s, 1 / temp)), softmax(scaled(t, 1 / temp))
        w_rev = 2 * sigmoid(entropy(ps) - entropy(pt))
        per.append(temp**2 * ((2 - w_rev) * kl(pt, ps) + w_rev * kl(ps, pt)))
    close(bdkd(data["s"], data["t"], temp, data["mask"]), valid_mean(per, flat(data["mask"])))


def test_bdkd_weights_equal_at_equal_entropy():
    """A permuted distribution has the same entropy: both KLs weigh 1."""
    s = torch.tensor([[1.0, 2.0, 0.5, -1.0]], dtype=torch.float64)
    t = s[:, [1, 0, 3, 2]]
    fwd = kd(s, t, 1.0)
    rev = kd(t, s, 1.0)
    torch.testing.assert_close(bdkd(s, t, 1.0), fwd + rev, **TOL)


def test_binary_kl_norm_value(data):
    temp, per = 2.0, []
    for s, t in zip(rows(data["s"]), rows(data["t"]), strict=True):
        total = 0.0
        for a, b in zip(s, t, strict=True):
            d = sigmoid((a - b) / temp)
            total += 0.5 * math.log(0.5 / d) + 0.5 * math.log(0.5 / (1 - d))
        per.append(temp**2 * total)
    value = binary_kl_norm(data["s"], data["t"], temp, data["mask"])
    close(value, valid_mean(per, flat(data["mask"])))


def test_binary_kl_norm_saturates_like_the_official_clamp():
    s = torch.tensor([[100.0, 0.0]], dtype=torch.float64)
    expected = 4.0 * (0.5 * math.log(0.5 / (1 - 1e-8)) + 0.5 * math.log(0.5 / 1e-8))
    close(binary_kl_norm(s, torch.zeros_like(s), 2.0), expected)


def test_zero_at_equality_and_non_negative(data):
    s, t, y = data["s"], data["t"], data["y"]
    for fn in (kd, bdkd, binary_kl_norm):
        assert float(fn(s, s.clone())) == pytest.approx(0.0, abs=1e-12)
        assert float(fn(s, t)) > 0
    assert float(dkd(s, s.clone(), y)) == pytest.approx(0.0, abs=1e-12)
    assert float(dkd(s, t, y)) > 0
