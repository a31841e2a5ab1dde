"""SimCC targets and decoding, RTMPose's KL loss, DWPose's logit and feature losses and its
decay, against float64 hand computations (tests/losses/lossref.py)."""

from __future__ import annotations

import math

import pytest
import torch

from kdbench.adapters.pose.simcc import simcc_decode, simcc_targets
from kdbench.losses.pose import dwpose_feature, dwpose_logit, simcc_kl
from kdbench.methods.dwpose import decay
from tests.losses.lossref import kl, log_softmax, rows, scaled, softmax


def test_simcc_targets_by_hand() -> None:
    # input 4×3 (W×H) at split 2 → 8 x-bins, 6 y-bins; keypoint at (1.3, 2.2) → bins (3, 4)
    kp = torch.tensor([[[1.3, 2.2, 2.0], [0.0, 0.0, 0.0], [30.0, 1.0, 2.0]]])
    tx, ty, w = simcc_targets(kp, (4, 3), (1.0, 2.0), 2.0)
    assert tx.shape == (1, 3, 8) and ty.shape == (1, 3, 6)
    assert w.tolist() == [[1.0, 0.0, 0.0]]  # unlabeled; and 3σ window beyond the bins (60 − 3 ≥ 8)
    for i in range(8):
        assert tx[0, 0, i].item() == pytest.approx(math.exp(-((i - 3) ** 2) / 2), rel=1e-6)
    for j in range(6):
        assert ty[0, 0, j].item() == pytest.approx(math.exp(-((j - 4) ** 2) / 8), rel=1e-6)
    assert tx[0, 1:].abs().sum() == 0 and ty[0, 1:].abs().sum() == 0


def test_simcc_decode_argmax_and_confidence() -> None:
    lx = torch.tensor([[[0.0, 5.0, 1.0, 0.0]]])  # argmax 1 → x = 0.5 at split 2
    ly = torch.tensor([[[3.0, 0.0, 0.0]]])  # argmax 0 → y = 0
    locs, conf = simcc_decode(lx, ly, 2.0)
    assert locs.tolist() == [[[0.5, 0.0]]]
    px = max(softmax([0.0, 5.0, 1.0, 0.0]))
    py = max(softmax([3.0, 0.0, 0.0]))
    assert conf.item() == pytest.approx(min(px, py), rel=1e-6)


def test_targets_decode_round_trip() -> None:
    kp = torch.tensor([[[10.0, 20.5, 2.0], [3.25, 7.75, 1.0]]])
    tx, ty, _ = simcc_targets(kp, (48, 64), (1.2, 1.4), 2.0)
    locs, _ = simcc_decode(tx * 10, ty * 10, 2.0)
    assert torch.allclose(locs, torch.round(kp[..., :2] * 2) / 2)


def test_simcc_kl_matches_mmpose_reduction() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, dtype=torch.float64)
    target = torch.softmax(torch.randn(2, 3, 5, dtype=torch.float64) * 3, -1)
    weight = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.5]], dtype=torch.float64)
    got = simcc_kl(logits, target, weight).item()
    # mmpose: mean over bins of the elementwise KL, × weight, summed over N·K, / K
    want = sum(wt * kl(q, softmax(z)) / 5 for z, q, wt in
               zip(rows(logits), rows(target), weight.reshape(-1).tolist(), strict=True)) / 3
    assert got == pytest.approx(want, rel=1e-10)


def test_dwpose_logit_by_hand() -> None:
    torch.manual_seed(1)
    s = torch.randn(2, 3, 4, dtype=torch.float64)
    t = torch.randn(2, 3, 4, dtype=torch.float64)
    beta = 10.0
    got = dwpose_logit(s, t, beta).item()
    per = [kl(softmax(scaled(tr, beta)), softmax(scaled(sr, beta))) for sr, tr in zip(rows(s), rows(t), strict=True)]
    want = sum(per) / 2 / 3  # (1/B)·Σ_b Σ_k, then / K
    assert got == pytest.approx(want, rel=1e-10)
    # same value from log-probabilities: no T² factor, β scales both sides
    lp = [sum(math.exp(a) * (a - b) for a, b in zip(log_softmax(scaled(tr, beta)), log_softmax(scaled(sr, beta)),
                                                    strict=True)) for sr, tr in zip(rows(s), rows(t), strict=True)]
    assert got == pytest.approx(sum(lp) / 6, rel=1e-9)


def test_dwpose_logit_detaches_teacher() -> None:
    s = torch.randn(1, 2, 3, requires_grad=True)
    t = torch.randn(1, 2, 3, requires_grad=True)
    dwpose_logit(s, t, 10.0).backward()
    assert s.grad is not None and t.grad is None


def test_dwpose_feature_by_hand() -> None:
    torch.manual_seed(2)
    fs = torch.randn(2, 3, 2, 2, dtype=torch.float64)
    ft = torch.randn(2, 3, 2, 2, dtype=torch.float64)
    got = dwpose_feature(fs, ft, 7e-5).item()
    want = 7e-5 * sum((a - b) ** 2 for a, b in zip(fs.reshape(-1).tolist(), ft.reshape(-1).tolist(), strict=True)) / 2
    assert got == pytest.approx(want, rel=1e-10)


def test_dwpose_decay() -> None:
    assert [decay(e, 4) for e in range(4)] == [1.0, 0.75, 0.5, 0.25]
