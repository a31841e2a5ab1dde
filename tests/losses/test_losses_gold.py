"""Hand-computed values and properties of GO-LSD's DDF and its per-layer generalisation."""

from __future__ import annotations

import math

import pytest
import torch

from kdbench.losses import ddf, layer_self_distillation
from tests.losses.lossref import close, flat, kl, rows, scaled, softmax, valid_mean

P, E, BINS = 5, 4, 7
TEMP = 5.0



@pytest.fixture
def data() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return {
        "s": torch.randn(P, E, BINS, generator=g, dtype=torch.float64) * 3,
        "t": torch.randn(P, E, BINS, generator=g, dtype=torch.float64) * 3,
        "w": torch.rand(P, generator=g, dtype=torch.float64),
        "matched": torch.tensor([True, False, True, False, False]),
    }


def _row_losses(s, t, w, temp=TEMP):
    """w_p · T² · KL per (query, edge) row, as a (P, E) nested list."""
    s_rows, t_rows = rows(s), rows(t)
    per_query = len(s_rows) // len(w)
    out = []
    for p, wp in enumerate(w):
        out.append(
            [
                wp
                * temp**2
                * kl(softmax(scaled(t_rows[r], 1 / temp)), softmax(scaled(s_rows[r], 1 / temp)))
                for r in range(p * per_query, (p + 1) * per_query)
            ]
        )
    return out


def test_ddf_value_matched_split(data):
    row_loss = _row_losses(data["s"], data["t"], flat(data["w"]))
    matched = flat(data["matched"])
    m_rows = [v for p, r in enumerate(row_loss) if matched[p] for v in r]
    u_rows = [v for p, r in enumerate(row_loss) if not matched[p] for v in r]
    k_m, k_u = sum(matched), len(matched) - sum(matched)
    expected = (
        math.sqrt(k_m) * sum(m_rows) / len(m_rows) + math.sqrt(k_u) * sum(u_rows) / len(u_rows)
    ) / (math.sqrt(k_m) + math.sqrt(k_u))
    close(ddf(data["s"], data["t"], data["w"], data["matched"], TEMP), expected)


def test_ddf_scaling_of_counts_cancels(data):
    """Official K = edge rows × 8/B: any common factor on both counts leaves the loss as is."""
    row_loss = _row_losses(data["s"], data["t"], flat(data["w"]))
    matched = flat(data["matched"])
    mean_m = sum(v for p, r in enumerate(row_loss) if matched[p] for v in r) / (2 * E)
    mean_u = sum(v for p, r in enumerate(row_loss) if not matched[p] for v in r) / (3 * E)
    scale = 4 * 8 / 2  # edges × 8 / batch
    num_pos, num_neg = math.sqrt(2 * scale), math.sqrt(3 * scale)
    expected = (mean_m * num_pos + mean_u * num_neg) / (num_pos + num_neg)
    close(ddf(data["s"], data["t"], data["w"], data["matched"], TEMP), expected)


def test_ddf_without_split_and_2d_and_empty_group(data):
    row_loss = _row_losses(data["s"], data["t"], flat(data["w"]))
    everything = [v for r in row_loss for v in r]
    close(ddf(data["s"], data["t"], data["w"]), sum(everything) / len(everything))
    # The per-query KL is averaged over edges, not summed.
    per_query = [sum(r) / E for r in row_loss]
    close(ddf(data["s"], data["t"], data["w"]), sum(per_query) / P)
    # (P, N+1) logits: one row per position.
    s2, t2 = data["s"][:, 0], data["t"][:, 0]
    flat_loss = [r[0] for r in _row_losses(s2, t2, flat(data["w"]))]
    close(ddf(s2, t2, data["w"]), sum(flat_loss) / P)
    # An empty group contributes 0 with weight √0 = 0: all matched → the matched mean.
    all_matched = torch.ones(P, dtype=torch.bool)
    close(ddf(s2, t2, data["w"], all_matched), sum(flat_loss) / P)


def test_ddf_properties(data):
    assert float(ddf(data["s"], data["s"].clone(), data["w"], data["matched"])) == pytest.approx(
        0.0, abs=1e-12
    )
    assert float(ddf(data["s"], data["t"], data["w"], data["matched"])) > 0
    s = data["s"].clone().requires_grad_(True)
    t = data["t"].clone().requires_grad_(True)
    w = data["w"].clone().requires_grad_(True)
    ddf(s, t, w, data["matched"]).backward()
    assert t.grad is None and w.grad is None
    assert s.grad is not None and torch.isfinite(s.grad).all()


def test_layer_self_distillation_value():
    g = torch.Generator().manual_seed(3)
    final = torch.randn(2, 3, 6, generator=g, dtype=torch.float64)
    layers = [torch.randn(2, 3, 6, generator=g, dtype=torch.float64) for _ in range(2)]
    weight = torch.rand(2, 3, generator=g, dtype=torch.float64)
    mask = torch.tensor([[True, False, True], [True, True, True]])
    temp, valid = 2.0, flat(mask)
    expected = 0.0
    for layer in layers:
        per = [
            wv * temp**2 * kl(softmax(scaled(f, 1 / temp)), softmax(scaled(z, 1 / temp)))
            for f, z, wv in zip(rows(final), rows(layer), flat(weight), strict=True)
        ]
        expected += valid_mean(per, valid)
    close(layer_self_distillation(layers, final, weight, temp, mask), expected)
    assert float(layer_self_distillation([final.clone()], final, None)) == pytest.approx(0.0)
    assert float(layer_self_distillation([], final, None)) == 0.0


def test_layer_self_distillation_final_gets_no_gradient():
    g = torch.Generator().manual_seed(4)
    final = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    layer = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    layer_self_distillation([layer], final, torch.sigmoid(final[:, 0])).backward()
    assert final.grad is None
    assert layer.grad is not None and layer.grad.abs().sum() > 0
