"""D-FINE's FDR pieces against values derived by hand from the official code's formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdbench.adapters.detection.fdr import bbox2distance, distance2bbox, integral, weighting_function

N, UP, SCALE = 32, 0.5, 4.0
STEP = 3.0 ** (1.0 / 15.0)  # (a·c + 1)^{2/(N−2)} = 3^{2/30}


def w_hand(n: int) -> float:
    """W(n) at N = 32, a = 0.5, c = 4, written out case by case."""
    if n == 0:
        return -4.0
    if n == N:
        return 4.0
    if n < N // 2:
        return 1.0 - STEP ** (N // 2 - n)
    return STEP ** (n - N // 2) - 1.0


def test_weighting_function_hand_values():
    w = weighting_function(N, UP, SCALE, dtype=torch.float64)
    assert w.shape == (N + 1,) and w.dtype == torch.float64
    assert float(w[0]) == -4.0 and float(w[16]) == 0.0 and float(w[32]) == 4.0
    assert math.isclose(float(w[1]), -2.0, abs_tol=1e-12)  # 1 − 3 = −a·c
    assert math.isclose(float(w[31]), 2.0, abs_tol=1e-12)
    assert math.isclose(float(w[17]), STEP - 1.0, abs_tol=1e-12)
    assert math.isclose(float(w[8]), 1.0 - 3.0 ** (8 / 15), abs_tol=1e-12)
    np.testing.assert_allclose(w.numpy(), [w_hand(n) for n in range(N + 1)], rtol=0, atol=1e-12)


def test_weighting_function_shape_properties():
    w = weighting_function(N)
    assert w.dtype == torch.get_default_dtype()
    assert bool((w[1:] > w[:-1]).all())  # strictly increasing
    torch.testing.assert_close(w, -w.flip(0), rtol=0, atol=1e-6)  # antisymmetric
    small = weighting_function(4, 1.0, 2.0, dtype=torch.float64)  # s = 3, bins −4, −2, 0, 2, 4
    np.testing.assert_allclose(small.numpy(), [-4.0, -2.0, 0.0, 2.0, 4.0], atol=1e-12)
    assert float(weighting_function(N, -0.5, -4.0)[-1]) == 4.0  # |up|, |reg_scale| as the official
    for bad in (2, 31):
        with pytest.raises(ValueError):
            weighting_function(bad)


def test_integral():
    w = weighting_function(N, dtype=torch.float64)
    logits = torch.zeros(2, 3, 4, N + 1, dtype=torch.float64)
    assert integral(logits, w).shape == (2, 3, 4)
    torch.testing.assert_close(integral(logits, w), torch.zeros(2, 3, 4, dtype=torch.float64))  # uniform → 0
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 4, N + 1, generator=g, dtype=torch.float64) * 2
    rows = logits.reshape(-1, N + 1).numpy()
    expected = [sum(math.exp(v) * w_hand(n) for n, v in enumerate(r)) / sum(math.exp(v) for v in r) for r in rows]
    np.testing.assert_allclose(integral(logits, w).reshape(-1).numpy(), expected, rtol=0, atol=1e-12)
    with pytest.raises(ValueError):
        integral(logits[..., :-1], w)


def test_distance2bbox_hand_values_and_cxcywh():
    points = torch.tensor([[0.5, 0.4, 0.2, 0.1]], dtype=torch.float64)
    d = torch.tensor([[1.0, 2.0, -1.0, 0.5]], dtype=torch.float64)
    # w/c = 0.05, h/c = 0.025: x1 = .5 − 3·.05, x2 = .5 + 1·.05, y1 = .4 − 4·.025, y2 = .4 + 2.5·.025
    x1, x2, y1, y2 = 0.35, 0.55, 0.3, 0.4625
    expected = [[(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]]
    np.testing.assert_allclose(distance2bbox(points, d, SCALE).numpy(), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(distance2bbox(points, torch.zeros_like(d), SCALE), points)  # 0 → reference box


def _official_translate(phi: float, w: list[float]) -> tuple[int, float, float]:
    """The official translate_gt + bbox2distance + loss `.long()`, transcribed for one value."""
    index = sum(1 for v in w if v - phi <= 0) - 1
    if index < 0:
        return 0, 1.0, 0.0
    if index >= N:
        return int(N - 0.1), 0.0, 1.0
    left_diff, right_diff = abs(phi - w[index]), abs(w[index + 1] - phi)
    right = left_diff / (left_diff + right_diff)
    return index, 1.0 - right, right


def _targets(phi: list[float]):
    """Targets for a box whose four edges sit at `phi` (W units), with w/c = h/c = 1 (exact φ)."""
    cx, cy = 0.0, 0.0
    points = torch.tensor([[cx, cy, SCALE, SCALE]], dtype=torch.float64)
    left, top, right, bottom = (p + SCALE / 2 for p in phi)
    gt = torch.tensor([[cx - left, cy - top, cx + right, cy + bottom]], dtype=torch.float64)
    return bbox2distance(points, gt, N, SCALE, UP)


def test_bbox2distance_inside_edges():
    lo, wl, wr = _targets([0.05, -1.0, 3.0, 1.0])
    assert lo.dtype == torch.long and lo.shape == wl.shape == wr.shape == (1, 4)
    # left: 0 ≤ 0.05 < W(17) = s − 1 → n = 16, ω_→ = 0.05 / (s − 1)
    # top: W(6) = 1 − 3^{10/15} ≤ −1 < W(7) = 1 − 3^{9/15}
    # right: W(31) = 2 ≤ 3 < W(32) = 4 → ω_→ = 1/2;  bottom: W(n) = 1 → n = 16 + 15·ln2/ln3 = 25.46
    w6, w7 = 1 - 3 ** (10 / 15), 1 - 3 ** (9 / 15)
    w25, w26 = 3 ** (9 / 15) - 1, 3 ** (10 / 15) - 1
    right = [0.05 / (STEP - 1), (-1 - w6) / (w7 - w6), 0.5, (1 - w25) / (w26 - w25)]
    assert lo.tolist() == [[16, 6, 31, 25]]
    np.testing.assert_allclose(wr[0].numpy(), right, rtol=0, atol=1e-9)
    np.testing.assert_allclose(wl[0].numpy(), [1 - r for r in right], rtol=0, atol=1e-9)


def test_bbox2distance_edges_on_bins_and_outside():
    lo, wl, wr = _targets([0.0, -4.0, 4.0, 0.0])
    # exactly on W(16) = 0 and W(0) = −4: that bin with ω_← = 1; exactly on W(32) = 4 the official
    # counts as out of range above: bin N − 1 with ω_→ = 1 (the same mass, all on bin N).
    assert lo.tolist() == [[16, 0, N - 1, 16]]
    assert wl.tolist() == [[1.0, 1.0, 0.0, 1.0]] and wr.tolist() == [[0.0, 0.0, 1.0, 0.0]]
    lo, wl, wr = _targets([-10.0, 10.0, -4.5, 100.0])  # far outside on both sides
    assert lo.tolist() == [[0, N - 1, 0, N - 1]]
    assert wl.tolist() == [[1.0, 0.0, 1.0, 0.0]] and wr.tolist() == [[0.0, 1.0, 0.0, 1.0]]


def test_bbox2distance_matches_official_transcription_and_inverts_distance2bbox():
    g = torch.Generator().manual_seed(1)
    points = torch.rand(64, 4, generator=g, dtype=torch.float64) * 0.5 + 0.25  # normalised cx, cy, w, h
    d = torch.rand(64, 4, generator=g, dtype=torch.float64) * 12 - 6  # some beyond ±4
    boxes = distance2bbox(points, d, SCALE)
    cx, cy, bw, bh = boxes.unbind(-1)
    gt = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=-1)
    lo, wl, wr = bbox2distance(points, gt, N, SCALE, UP)
    w = [w_hand(n) for n in range(N + 1)]
    p = points.numpy()
    g_np = gt.numpy()
    for k in range(64):
        unit = [p[k, 2] / SCALE + 1e-16, p[k, 3] / SCALE + 1e-16]
        phis = [
            (p[k, 0] - g_np[k, 0]) / unit[0] - SCALE / 2,
            (p[k, 1] - g_np[k, 1]) / unit[1] - SCALE / 2,
            (g_np[k, 2] - p[k, 0]) / unit[0] - SCALE / 2,
            (g_np[k, 3] - p[k, 1]) / unit[1] - SCALE / 2,
        ]
        for e, phi in enumerate(phis):
            index, left, right = _official_translate(phi, w)
            assert int(lo[k, e]) == index
            assert math.isclose(float(wl[k, e]), left, abs_tol=1e-9)
            assert math.isclose(float(wr[k, e]), right, abs_tol=1e-9)
    # Inside the range the two-bin target's expectation is the offset itself.
    values = weighting_function(N, dtype=torch.float64)
    recon = wl * values[lo] + wr * values[lo + 1]
    inside = d.abs() < 4
    torch.testing.assert_close(recon[inside], d[inside], rtol=0, atol=1e-9)
    torch.testing.assert_close(recon[~inside], d[~inside].sign() * 4)


def test_bbox2distance_leading_shape_and_detached():
    points = torch.tensor([[0.5, 0.5, 0.4, 0.2]]).repeat(2, 3, 1).requires_grad_()
    gt = torch.tensor([0.3, 0.35, 0.75, 0.6]).expand(2, 3, 4)
    out = bbox2distance(points, gt, N, SCALE, UP)
    assert all(t.shape == (2, 3, 4) and not t.requires_grad for t in out)
    assert out[1].dtype == torch.float32
