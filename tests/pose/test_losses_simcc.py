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


def _official_gt(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> float:
    """mmpose KLDiscretLoss.forward, one axis, by hand: Σ_b Σ_k w_bk·(1/W)·KL_bk, then / K."""
    b, k, w = logits.shape
    total = 0.0
    for i in range(b):
        for j in range(k):
            q, z = target[i, j].tolist(), logits[i, j].tolist()
            total += weight[i, j].item() * kl(q, softmax(z)) / w
    return total / k


def _official_kd(student: torch.Tensor, teacher: torch.Tensor, weight: float) -> float:
    """mmpose KDLoss.loss, one axis, by hand: weight·(1/B)·Σ_b Σ_k Σ_i KL, then / K (forward)."""
    b, k, _ = student.shape
    total = 0.0
    for i in range(b):
        for j in range(k):
            total += kl(softmax(teacher[i, j].tolist()), softmax(student[i, j].tolist()))
    return weight * total / b / k


@pytest.mark.parametrize(("b", "k", "w"), [(2, 3, 6), (5, 2, 11)])
def test_dwpose_logit_and_gt_reductions_match_mmpose(b: int, k: int, w: int) -> None:
    # float64 hand loops of the official reductions (mmpose KDLoss, KLDiscretLoss) at two batch
    # sizes and bin counts; kdbench's losses must give the same numbers
    torch.manual_seed(10 * b + w)
    s = torch.randn(b, k, w, dtype=torch.float64)
    t = torch.randn(b, k, w, dtype=torch.float64)
    q = torch.softmax(torch.randn(b, k, w, dtype=torch.float64) * 2, -1)
    vis = torch.ones(b, k, dtype=torch.float64)
    assert 0.1 * dwpose_logit(s, t).item() == pytest.approx(_official_kd(s, t, 0.1), rel=1e-10)
    assert simcc_kl(s, q, vis).item() == pytest.approx(_official_gt(s, q, vis), rel=1e-10)


@pytest.mark.parametrize(("b", "w"), [(2, 6), (4, 16)])
def test_dwpose_relative_weight_is_official_w_over_b(b: int, w: int) -> None:
    # when the teacher's distribution equals the label distribution, every keypoint's KL to
    # either is the same number, so logit/gt isolates the reductions' ratio: the official
    # 0.1·(Σ KL / B / K) over (Σ KL / W / K) = 0.1·W/B — kdbench's terms must give exactly that
    k = 3
    torch.manual_seed(b * w)
    s = torch.randn(b, k, w, dtype=torch.float64)
    t = torch.randn(b, k, w, dtype=torch.float64)
    q = torch.softmax(t, -1)
    vis = torch.ones(b, k, dtype=torch.float64)
    ratio = 0.1 * dwpose_logit(s, t).item() / simcc_kl(s, q, vis).item()
    assert ratio == pytest.approx(0.1 * w / b, rel=1e-10)
    assert ratio == pytest.approx(_official_kd(s, t, 0.1) / _official_gt(s, q, vis), rel=1e-10)


def test_dwpose_losses_zero_at_equality() -> None:
    torch.manual_seed(3)
    z = torch.randn(3, 2, 7, dtype=torch.float64)
    assert dwpose_logit(z, z.clone(), 10.0).item() == pytest.approx(0.0, abs=1e-12)
    f = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    assert dwpose_feature(f, f.clone()).item() == 0.0


def test_dwpose_feature_detaches_teacher() -> None:
    fs = torch.randn(2, 3, 2, 2, requires_grad=True)
    ft = torch.randn(2, 3, 2, 2, requires_grad=True)
    dwpose_feature(fs, ft).backward()
    assert fs.grad is not None and ft.grad is None


def test_masked_keypoints_change_nothing_in_gt_but_count_in_kd() -> None:
    # the ground-truth loss ignores keypoints of weight 0 (KLDiscretLoss × target_weight);
    # KDLoss receives target_weight but does not use it: every keypoint is distilled
    torch.manual_seed(4)
    s = torch.randn(2, 3, 5, dtype=torch.float64)
    t = torch.randn(2, 3, 5, dtype=torch.float64)
    q = torch.softmax(torch.randn(2, 3, 5, dtype=torch.float64), -1)
    vis = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    s2 = s.clone()
    s2[0, 1] *= 3.0  # a shift would leave the softmax unchanged; a rescale does not
    s2[1, 2] = s2[1, 2].flip(-1)
    assert simcc_kl(s2, q, vis).item() == pytest.approx(simcc_kl(s, q, vis).item(), rel=1e-12)
    assert dwpose_logit(s2, t).item() != pytest.approx(dwpose_logit(s, t).item(), rel=1e-6)
    assert dwpose_logit(s, t).item() == pytest.approx(_official_kd(s, t, 1.0), rel=1e-10)


def test_dwpose_stage2_clips_gradients_at_one() -> None:
    from kdbench.methods.dwpose import DWPose

    method = DWPose.__new__(DWPose)
    method.config = DWPose.Config()
    (stage,) = method.later_stages()
    assert stage.train["grad_clip"] == 1.0
    assert stage.train["schedule"] == {"name": "constant", "warmup_epochs": 0}
    method.config = DWPose.Config(stage2_grad_clip=0.0)
    (stage,) = method.later_stages()
    assert "grad_clip" not in stage.train
