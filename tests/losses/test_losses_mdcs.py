"""MDCS's losses (kdbench.losses.mdcs) against float64 hand computations, and their properties: the
prior shift is λ·log n (+1e-9 inside the log), the diversity loss is the CE of the shifted logits,
the consistency term is the KL over the weak view's correctly classified samples only, zero where
none is, zero at equal views, with no gradient into the weak (teacher) side."""

from __future__ import annotations

import math

import pytest
import torch

from kdbench.losses import consistency_sd, diversity_ce, prior_shift
from tests.losses.lossref import close, flat, kl, log_softmax, rows, scaled, softmax

K = 4
COUNTS = torch.tensor([50, 20, 8, 2])


@pytest.fixture
def data() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return {
        "w": torch.randn(6, K, generator=g, dtype=torch.float64) * 2,
        "s": torch.randn(6, K, generator=g, dtype=torch.float64) * 2,
        "y": torch.tensor([0, 1, 2, 3, 0, 1]),
    }


@pytest.mark.parametrize("lam", [-0.5, 1.0, 2.5])
def test_prior_shift_is_lambda_log_counts(lam):
    shift = prior_shift(COUNTS, lam)
    assert shift.dtype == torch.float64
    for value, n in zip(shift.tolist(), COUNTS.tolist(), strict=True):
        assert math.isclose(value, math.log(n**lam + 1e-9), abs_tol=1e-12)


def test_prior_shift_refuses_an_empty_class():
    with pytest.raises(ValueError, match=r"MDCS needs every class in the training split; class counts \[3, 0\]"):
        prior_shift(torch.tensor([3, 0]), 1.0)


@pytest.mark.parametrize("lam", [-0.5, 2.5])
def test_diversity_ce_by_hand(data, lam):
    shift = prior_shift(COUNTS, lam)
    per = [-log_softmax([v + b for v, b in zip(z, shift.tolist(), strict=True)])[y]
           for z, y in zip(rows(data["w"]), flat(data["y"]), strict=True)]
    close(diversity_ce(data["w"], data["y"], shift), sum(per) / len(per))
    mask = torch.tensor([True, False, True, True, False, True])
    kept = [p for p, ok in zip(per, mask.tolist(), strict=True) if ok]
    close(diversity_ce(data["w"], data["y"], shift, mask), sum(kept) / len(kept))


@pytest.mark.parametrize("temp", [1.0, 2.0])
def test_consistency_sd_by_hand_over_the_confident_samples(data, temp):
    w, s, y = rows(data["w"]), rows(data["s"]), flat(data["y"])
    picked = [i for i in range(6) if max(range(K), key=lambda k: w[i][k]) == y[i]]
    assert 0 < len(picked) < 6  # the case selects some samples, not all
    per = [kl(softmax(scaled(w[i], 1 / temp)), softmax(scaled(s[i], 1 / temp))) * temp**2 for i in picked]
    close(consistency_sd(data["w"], data["s"], data["y"], temp), sum(per) / len(per))


def test_consistency_sd_is_zero_without_confident_samples_and_at_equal_views(data):
    wrong = (data["w"].argmax(dim=-1) + 1) % K
    assert float(consistency_sd(data["w"], data["s"], wrong)) == 0.0
    assert float(consistency_sd(data["w"], data["w"].clone(), data["y"]).abs()) < 1e-12


def test_consistency_sd_sends_no_gradient_to_the_weak_view_and_masked_rows_are_inert(data):
    w = data["w"].clone().requires_grad_(True)
    s = data["s"].clone().requires_grad_(True)
    mask = torch.tensor([True, True, True, False, False, False])
    consistency_sd(w, s, data["y"], 1.0, mask).backward()
    assert w.grad is None
    assert s.grad is not None and float(s.grad[~mask].abs().max()) == 0.0
    moved = data["s"].clone()
    moved[~mask] += 3.0
    close(consistency_sd(data["w"], moved, data["y"], 1.0, mask),
          float(consistency_sd(data["w"], data["s"], data["y"], 1.0, mask)))
