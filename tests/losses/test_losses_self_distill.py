"""Hand-computed values and properties: soft CE, label smoothing, PS-KD targets, USKD."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdbench.losses import (
    emasd,
    label_smoothing,
    pskd_targets,
    soft_cross_entropy,
    uskd,
    uskd_terms,
)
from tests.losses.lossref import close, entropy, flat, log_softmax, rows, softmax, valid_mean

K = 5



@pytest.fixture
def data() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "z": torch.randn(2, 3, K, generator=g, dtype=torch.float64) * 2,
        "w": torch.randn(2, 3, K, generator=g, dtype=torch.float64) * 2,
        "y": torch.randint(0, K, (2, 3), generator=g),
        "p": torch.softmax(torch.randn(2, 3, K, generator=g, dtype=torch.float64), dim=-1),
        "mask": torch.tensor([[True, True, False], [False, True, True]]),
    }


def test_soft_cross_entropy_value(data):
    per = [
        -sum(yi * li for yi, li in zip(y, log_softmax(z), strict=True))
        for z, y in zip(rows(data["z"]), rows(data["p"]), strict=True)
    ]
    value = soft_cross_entropy(data["z"], data["p"], data["mask"])
    close(value, valid_mean(per, flat(data["mask"])))


def test_soft_cross_entropy_is_not_zero_at_equality(data):
    """At σ(z) = ỹ the loss is the entropy H(ỹ) > 0, its minimum over z."""
    probs = torch.softmax(data["z"], dim=-1)
    per = [entropy(p) for p in rows(probs)]
    close(soft_cross_entropy(data["z"], probs), sum(per) / len(per))
    assert float(soft_cross_entropy(data["z"], probs)) > 0
    assert float(soft_cross_entropy(data["z"], data["p"])) > float(
        soft_cross_entropy(torch.log(data["p"]), data["p"])
    )


@pytest.mark.parametrize("epsilon", [0.1, 0.3])
def test_label_smoothing_value(data, epsilon):
    per = []
    for z, y in zip(rows(data["z"]), flat(data["y"]), strict=True):
        target = [(1 - epsilon) * (i == y) + epsilon / K for i in range(K)]
        per.append(-sum(a * b for a, b in zip(target, log_softmax(z), strict=True)))
    value = label_smoothing(data["z"], data["y"], epsilon, data["mask"])
    close(value, valid_mean(per, flat(data["mask"])))
    # ... and it is torch's convention.
    torch_value = F.cross_entropy(
        data["z"].reshape(-1, K), data["y"].reshape(-1), label_smoothing=epsilon
    )
    torch.testing.assert_close(label_smoothing(data["z"], data["y"], epsilon), torch_value)


def test_pskd_targets_value_rows_sum_to_one_and_detached(data):
    past = data["p"].clone().requires_grad_(True)
    out = pskd_targets(data["y"], past, 0.3)
    for got, p, y in zip(rows(out), rows(data["p"]), flat(data["y"]), strict=True):
        for i in range(K):
            assert math.isclose(got[i], 0.7 * (i == y) + 0.3 * p[i], abs_tol=1e-12)
    torch.testing.assert_close(out.sum(-1), torch.ones(2, 3, dtype=torch.float64))
    assert not out.requires_grad
    soft = torch.softmax(data["w"], -1)
    torch.testing.assert_close(pskd_targets(soft, data["p"], 0.3), 0.7 * soft + 0.3 * data["p"])
    assert pskd_targets(soft, data["p"], 0.0).equal(soft)


# USKD -------------------------------------------------------------------------------------


def _zipf(scores: list[float], drop: list[int]) -> list[float]:
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    zipf = {cls: 1.0 / (pos + 1) for pos, cls in enumerate(order)}
    kept = [zipf[i] for i in range(len(scores)) if i not in drop]
    return [v / sum(kept) for v in kept]


def _uskd_reference(z_rows, w_rows, labels, values, weak_targets, rank):
    """labels/values: per row the list of "target" classes and their target values."""
    n = len(z_rows)
    k = len(z_rows[0])
    s_sq = [[softmax(z)[c] ** 2 for c in lab] for z, lab in zip(z_rows, labels, strict=True)]
    col_mean = [sum(r[j] for r in s_sq) / n for j in range(len(labels[0]))]
    loss_t = loss_non = loss_weak = 0.0
    for z, w, lab, val, wt, sq in zip(
        z_rows, w_rows, labels, values, weak_targets, s_sq, strict=True
    ):
        log_s, w_p = log_softmax(z), softmax(w)
        p_t = [0.0 if v == 0 else sq[j] + v - col_mean[j] for j, v in enumerate(val)]
        loss_t -= sum(p * log_s[c] for p, c in zip(p_t, lab, strict=True)) / n
        loss_weak -= sum(a * b for a, b in zip(wt, log_softmax(w), strict=True)) / n
        s = log_s if rank == "official" else softmax(z)
        w_t, s_t = sum(w_p[c] for c in lab), sum(s[c] for c in lab)
        scores = [w_p[i] / (1 - w_t + 1e-6) + s[i] / (1 - s_t + 1e-6) for i in range(k)]
        zipf = _zipf(scores, lab)
        log_non = log_softmax([z[i] for i in range(k) if i not in lab])
        loss_non -= sum(a * b for a, b in zip(zipf, log_non, strict=True)) / n
    return {"target": loss_t, "non_target": loss_non, "weak": loss_weak}


@pytest.mark.parametrize("rank", ["official", "paper"])
def test_uskd_terms_value_hard_target(data, rank):
    y = flat(data["y"])
    weak_targets = [[0.9 * (i == c) + 0.1 / K for i in range(K)] for c in y]
    expected = _uskd_reference(
        rows(data["z"]), rows(data["w"]), [[c] for c in y], [[1.0]] * len(y), weak_targets, rank
    )
    terms = uskd_terms(data["z"], data["w"], data["y"], rank=rank)
    for name, value in expected.items():
        close(terms[name], value)
    total = uskd(data["z"], data["w"], data["y"], alpha=1.0, beta=0.1, mu=0.005, rank=rank)
    close(total, expected["target"] + 0.1 * expected["non_target"] + 0.005 * expected["weak"])


@pytest.mark.parametrize("rank", ["official", "paper"])
def test_uskd_terms_value_mixup_target(data, rank):
    """Soft targets follow the official code: the two largest entries are both targets."""
    lam = 0.7
    y = flat(data["y"])
    other = [(c + 2) % K for c in y]
    one_hot = F.one_hot(data["y"], K).double()
    soft = lam * one_hot + (1 - lam) * one_hot.roll(2, dims=-1)
    expected = _uskd_reference(
        rows(data["z"]),
        rows(data["w"]),
        [[a, b] for a, b in zip(y, other, strict=True)],
        [[lam, 1 - lam]] * len(y),
        [[0.9 * v + 0.1 / K for v in r] for r in rows(soft)],
        rank,
    )
    terms = uskd_terms(data["z"], data["w"], soft, rank=rank)
    for name, value in expected.items():
        close(terms[name], value)


def test_uskd_official_and_paper_ranking_differ():
    """Student log-probabilities spread the non-target scores far more than probabilities.

    Official scores ≈ (0.64, −3.69, −7.19, −5.81): class 3 outranks class 2. Paper scores
    ≈ (48.0, 1.11, 0.68, 0.21): class 2 outranks class 3.
    """
    z = torch.tensor([[4.0, 0.0, -4.0, -2.0]], dtype=torch.float64)
    w = torch.tensor([[1.0, 0.0, 1.0, -1.0]], dtype=torch.float64)
    y = torch.tensor([0])
    official = uskd_terms(z, w, y, rank="official")["non_target"]
    paper = uskd_terms(z, w, y, rank="paper")["non_target"]
    log_non = log_softmax([0.0, -4.0, -2.0])  # classes 1, 2, 3
    # ranks incl. the target: official 0,1,3,2 → z ∝ (1/2, 1/4, 1/3); paper 0,1,2,3.
    for value, zipf in ((official, [1 / 2, 1 / 4, 1 / 3]), (paper, [1 / 2, 1 / 3, 1 / 4])):
        norm = [v / sum(zipf) for v in zipf]
        close(value, -sum(a * b for a, b in zip(norm, log_non, strict=True)))
    assert float(official) != pytest.approx(float(paper))


def test_uskd_gradients_and_rank_validation(data):
    z = data["z"].clone().requires_grad_(True)
    w = data["w"].clone().requires_grad_(True)
    uskd(z, w, data["y"]).backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
    assert w.grad is not None and torch.isfinite(w.grad).all()
    with pytest.raises(ValueError, match="rank"):
        uskd(data["z"], data["w"], data["y"], rank="zipf")  # type: ignore[arg-type]


def test_emasd_value_is_the_summed_squared_error(data):
    """Σ over valid positions and classes of (z_S − z_T)², not averaged (DeGLA's mse_loss(sum))."""
    per = [sum((a - b) ** 2 for a, b in zip(zs, zt, strict=True))
           for zs, zt in zip(rows(data["z"]), rows(data["w"]), strict=True)]
    close(emasd(data["z"], data["w"]), sum(per))
    kept = [v for v, ok in zip(per, flat(data["mask"]), strict=True) if ok]
    close(emasd(data["z"], data["w"], data["mask"]), sum(kept))
    assert float(emasd(data["z"], data["z"].clone())) == 0.0  # zero where student and teacher agree
    assert float(emasd(data["z"], data["z"] + 1.0)) > 0  # a shift of the logits counts: no softmax


def test_emasd_teacher_gets_no_gradient_and_the_student_gets_two_times_the_error(data):
    z = data["z"].clone().requires_grad_(True)
    w = data["w"].clone().requires_grad_(True)
    emasd(z, w, data["mask"]).backward()
    assert w.grad is None
    valid = data["mask"][..., None]
    assert torch.equal(z.grad, torch.where(valid, 2 * (data["z"] - data["w"]), torch.zeros_like(z)))


def test_emasd_sums_bf16_inputs_in_float32(data):
    z, w = data["z"].to(torch.bfloat16), data["w"].to(torch.bfloat16)
    value = emasd(z, w)
    assert value.dtype == torch.float32
    assert math.isclose(float(value), float(((z.double() - w.double()) ** 2).sum()), rel_tol=1e-6)
