"""D-FINE's FGL, VFL and DETR box losses against independent float64 arithmetic."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchvision.ops import sigmoid_focal_loss

from kdbench.losses import box_giou, box_l1, fgl, varifocal
from tests.losses.lossref import flat, log_softmax, rows, sigmoid

BINS = 9  # N + 1 with N = 8


def close(value: torch.Tensor, expected: float, tol: float = 1e-10) -> None:
    assert value.dim() == 0
    assert math.isclose(float(value), expected, rel_tol=0, abs_tol=tol), (float(value), expected)


@pytest.fixture
def fgl_data() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    k = 3
    wr = torch.rand(k, 4, generator=g, dtype=torch.float64)
    return {
        "logits": torch.randn(k, 4, BINS, generator=g, dtype=torch.float64) * 2,
        "left": torch.randint(0, BINS - 1, (k, 4), generator=g),
        "wl": 1 - wr,
        "wr": wr,
        "iou": torch.tensor([0.9, 0.3, 0.6], dtype=torch.float64),
    }


def _fgl_hand(d: dict[str, torch.Tensor], num_boxes: float) -> float:
    logp = [log_softmax(r) for r in rows(d["logits"])]
    left, wl, wr, iou = flat(d["left"]), flat(d["wl"]), flat(d["wr"]), flat(d["iou"])
    total = 0.0
    for r, lp in enumerate(logp):  # row r = query r // 4, edge r % 4
        total += iou[r // 4] * (wl[r] * -lp[left[r]] + wr[r] * -lp[left[r] + 1])
    return total / num_boxes


def test_fgl_value(fgl_data):
    d = fgl_data
    close(fgl(d["logits"], d["left"], d["wl"], d["wr"], d["iou"], 3.0), _fgl_hand(d, 3.0))
    close(fgl(d["logits"], d["left"], d["wl"], d["wr"], d["iou"], 7.5), _fgl_hand(d, 7.5))


def test_fgl_sums_edges_divides_by_boxes():
    """avg_factor is num_boxes, not num_boxes × 4: one box, 4 identical edges → 4 × one edge's CE."""
    logits = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64).expand(1, 4, 3)
    left = torch.zeros(1, 4, dtype=torch.long)
    ones, zeros = torch.ones(1, 4, dtype=torch.float64), torch.zeros(1, 4, dtype=torch.float64)
    ce0 = math.log(1 + math.e + math.e**2)
    close(fgl(logits, left, ones, zeros, torch.ones(1, dtype=torch.float64), 1.0), 4 * ce0)


def test_fgl_zero_iou_query_contributes_nothing(fgl_data):
    d = dict(fgl_data)
    d["iou"] = torch.tensor([0.9, 0.0, 0.6], dtype=torch.float64)
    full = fgl(d["logits"], d["left"], d["wl"], d["wr"], d["iou"], 3.0)
    keep = [0, 2]
    dropped = fgl(d["logits"][keep], d["left"][keep], d["wl"][keep], d["wr"][keep], d["iou"][keep], 3.0)
    close(full, float(dropped))
    empty = torch.zeros(0, 4, BINS, dtype=torch.float64)
    zeros = torch.zeros(0, 4, dtype=torch.float64)
    close(fgl(empty, zeros.long(), zeros, zeros, torch.zeros(0, dtype=torch.float64), 1.0), 0.0)


def test_fgl_gradient_reaches_logits_only(fgl_data):
    d = {k: v.clone() for k, v in fgl_data.items()}
    for key in ("logits", "wl", "wr", "iou"):
        d[key].requires_grad_()
    fgl(d["logits"], d["left"], d["wl"], d["wr"], d["iou"], 3.0).backward()
    assert d["logits"].grad is not None and bool(d["logits"].grad.abs().sum() > 0)
    assert d["wl"].grad is None and d["wr"].grad is None and d["iou"].grad is None


@pytest.fixture
def vfl_data() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(4)
    b, q, c = 2, 5, 3
    score = torch.zeros(b, q, c, dtype=torch.float64)
    score[0, 1, 2], score[1, 0, 0], score[1, 3, 1] = 0.8, 0.35, 0.6
    return {"logits": torch.randn(b, q, c, generator=g, dtype=torch.float64) * 2, "score": score}


def _vfl_hand(logits: torch.Tensor, score: torch.Tensor, positive: list[bool], alpha, gamma, num_boxes) -> float:
    total = 0.0
    for z, t, y in zip(flat(logits), flat(score), positive, strict=True):
        p = sigmoid(z)
        bce = -(t * math.log(p) + (1 - t) * math.log(1 - p))
        weight = alpha * p**gamma * (0.0 if y else 1.0) + t
        total += weight * bce
    return total / num_boxes


def test_varifocal_value(vfl_data):
    z, t = vfl_data["logits"], vfl_data["score"]
    expected = _vfl_hand(z, t, [v > 0 for v in flat(t)], 0.75, 2.0, 3.0)
    close(varifocal(z, t, num_boxes=3.0), expected)
    expected = _vfl_hand(z, t, [v > 0 for v in flat(t)], 0.25, 1.5, 2.0)
    close(varifocal(z, t, alpha=0.25, gamma=1.5, num_boxes=2.0), expected)


def test_varifocal_matched_with_zero_iou_and_positive_mask(vfl_data):
    """The official weight uses the one-hot mask: a matched class with IoU 0 gets weight 0."""
    z, t = vfl_data["logits"], vfl_data["score"].clone()
    positive = t > 0
    positive[0, 4, 1] = True  # matched, IoU 0
    expected = _vfl_hand(z, t, flat(positive), 0.75, 2.0, 4.0)
    close(varifocal(z, t, num_boxes=4.0, positive=positive), expected)
    without = _vfl_hand(z, t, flat(t > 0), 0.75, 2.0, 4.0)
    p = sigmoid(float(z[0, 4, 1]))
    close(varifocal(z, t, num_boxes=4.0, positive=positive), without - 0.75 * p**2 * -math.log(1 - p) / 4.0)


def test_varifocal_confident_correct_is_small():
    t = torch.zeros(1, 4, 5, dtype=torch.float64)
    t[0, 2, 3] = 1.0
    logits = torch.where(t > 0, 20.0, -20.0).to(torch.float64)
    assert float(varifocal(logits, t)) < 1e-6
    assert float(varifocal(-logits, t)) > 10.0


def test_varifocal_no_targets_is_alpha_weighted_focal_bce(vfl_data):
    z = vfl_data["logits"]
    zero = torch.zeros_like(z)
    expected = sum(0.75 * sigmoid(v) ** 2 * -math.log(1 - sigmoid(v)) for v in flat(z)) / 2.0
    close(varifocal(z, zero, num_boxes=2.0), expected)
    # torchvision's focal loss weights negatives by (1 − alpha): the same with alpha = 0.25.
    focal = sigmoid_focal_loss(z, zero, alpha=0.25, gamma=2.0, reduction="sum") / 2.0
    close(varifocal(z, zero, num_boxes=2.0), float(focal))


def test_varifocal_official_reduction(vfl_data):
    """loss.mean(1).sum() · Q / num_boxes (the official form) is the plain sum / num_boxes."""
    z, t = vfl_data["logits"], vfl_data["score"]
    y = (t > 0).to(z.dtype)
    weight = 0.75 * torch.sigmoid(z).pow(2) * (1 - y) + t
    elem = torch.nn.functional.binary_cross_entropy_with_logits(z, t, weight=weight, reduction="none")
    close(varifocal(z, t, num_boxes=3.0), float(elem.mean(1).sum() * z.shape[1] / 3.0))


def test_varifocal_gradient_reaches_logits_only(vfl_data):
    z, t = vfl_data["logits"].clone().requires_grad_(), vfl_data["score"].clone().requires_grad_()
    varifocal(z, t, num_boxes=3.0).backward()
    assert z.grad is not None and bool(z.grad.abs().sum() > 0)
    assert t.grad is None


PRED = [[0.5, 0.5, 0.4, 0.2], [0.3, 0.6, 0.2, 0.4]]  # cx, cy, w, h
GT = [[0.55, 0.45, 0.3, 0.3], [0.7, 0.2, 0.1, 0.1]]  # the second pair is disjoint


def _xyxy(b: list[float]) -> list[float]:
    return [b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2]


def _area(r: list[float]) -> float:
    return (r[2] - r[0]) * (r[3] - r[1])


def _giou_hand(a: list[float], b: list[float]) -> float:
    a, b = _xyxy(a), _xyxy(b)
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = _area(a) + _area(b) - iw * ih
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return iw * ih / union - (hull - union) / hull


def test_box_l1_and_giou_values():
    pred, gt = torch.tensor(PRED, dtype=torch.float64), torch.tensor(GT, dtype=torch.float64)
    l1 = sum(abs(p - g) for pr, gr in zip(PRED, GT, strict=True) for p, g in zip(pr, gr, strict=True))
    close(box_l1(pred, gt, 4.0), l1 / 4.0)
    giou = [_giou_hand(p, g) for p, g in zip(PRED, GT, strict=True)]
    assert giou[1] < 0  # disjoint boxes: negative GIoU
    close(box_giou(pred, gt, 4.0), sum(1 - v for v in giou) / 4.0)
    close(box_giou(gt, gt, 1.0), 0.0)
    empty = torch.zeros(0, 4, dtype=torch.float64)
    close(box_l1(empty, empty, 1.0), 0.0)
    close(box_giou(empty, empty, 1.0), 0.0)


@pytest.mark.parametrize("loss", [box_l1, box_giou])
def test_box_losses_gradient_reaches_prediction_only(loss):
    pred = torch.tensor(PRED, dtype=torch.float64, requires_grad=True)
    gt = torch.tensor(GT, dtype=torch.float64, requires_grad=True)
    loss(pred, gt, 2.0).backward()
    assert pred.grad is not None and bool(np.abs(pred.grad.numpy()).sum() > 0)
    assert gt.grad is None
