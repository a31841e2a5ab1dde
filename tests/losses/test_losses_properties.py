"""Properties shared by every masked loss: no gradient into the model it does not train (the
teacher; for `bdkd_teacher`, which trains BD-KD's online teacher, the student), masked positions are inert.

Each case is called as fn(student, teacher, target, mask) on (B, T, K) float64 tensors.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from kdbench.losses import (
    bdkd,
    bdkd_teacher,
    binary_kl_norm,
    dkd,
    emasd,
    feature_mse,
    gtsd,
    kd,
    label_smoothing,
    layer_self_distillation,
    nkd,
    ofa,
    soft_cross_entropy,
    taid,
)

Case = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]

CASES: dict[str, Case] = {
    "kd": lambda s, t, y, m: kd(s, t, 2.0, m),
    "dkd": lambda s, t, y, m: dkd(s, t, y, 1.0, 8.0, 2.0, m),
    "nkd": lambda s, t, y, m: nkd(s, t, y, 2.0, 1.5, m),
    "taid": lambda s, t, y, m: taid(s, t, 0.4, m),
    "ofa": lambda s, t, y, m: ofa(s, t, y, 1.0, 2.0, m),
    "ofa_eps": lambda s, t, y, m: ofa(s, t, y, 1.5, 2.0, m),
    "bdkd": lambda s, t, y, m: bdkd(s, t, 2.0, m),
    # BD-KD's online-teacher loss trains the teacher: its logits take the trained slot (s here), the
    # student's the detached one (t), so "no teacher gradient" reads "no gradient into the student"
    "bdkd_teacher": lambda s, t, y, m: bdkd_teacher(s, t, 2.0, m),
    "binary_kl_norm": lambda s, t, y, m: binary_kl_norm(s, t, 2.0, m),
    "soft_cross_entropy": lambda s, t, y, m: soft_cross_entropy(s, torch.softmax(t, -1), m),
    "label_smoothing": lambda s, t, y, m: label_smoothing(s, y, 0.1, m),
    "layer_self_distillation": lambda s, t, y, m: layer_self_distillation(
        [s, 0.5 * s], t, torch.sigmoid(t[..., 0]), 2.0, m
    ),
    "feature_mse": lambda s, t, y, m: feature_mse(s, t, m),
    "feature_mse_sum": lambda s, t, y, m: feature_mse(s, t, m, reduction="sum"),
    "emasd": lambda s, t, y, m: emasd(s, t, m),
    "gtsd": lambda s, t, y, m: sum(v for v in gtsd(s, y, t, 0.6, m) if v is not None),
    "gtsd_generation0": lambda s, t, y, m: gtsd(s, y, None, 0.6, m)[0],
}
# "sum" divides by dim 0, which flattening the valid positions changes.
SUBSET_CASES = [name for name in CASES if name != "feature_mse_sum"]

MASK = torch.tensor([[True, False, True, True], [False, True, True, False]])


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(2, 4, 6, generator=g, dtype=torch.float64) * 2
    t = torch.randn(2, 4, 6, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, 6, (2, 4), generator=g)
    return s, t, y


def _with_garbage(s, t, y, seed):
    """Huge values (seed > 0) or NaN (seed 0) at the masked positions."""
    g = torch.Generator().manual_seed(seed)
    s, t, y = s.clone(), t.clone(), y.clone()
    scale = 1e6 if seed else float("nan")
    s[~MASK] = torch.randn(s[~MASK].shape, generator=g, dtype=s.dtype) * scale
    t[~MASK] = torch.randn(t[~MASK].shape, generator=g, dtype=t.dtype) * scale
    y[~MASK] = -100  # an ignore index, out of range
    return s, t, y


@pytest.mark.parametrize("name", list(CASES))
def test_masked_positions_change_nothing(name):
    fn = CASES[name]
    s, t, y = _inputs()
    reference = fn(*_with_garbage(s, t, y, 1), MASK)
    assert torch.isfinite(reference)
    assert torch.equal(fn(*_with_garbage(s, t, y, 2), MASK), reference)
    assert torch.equal(fn(*_with_garbage(s, t, y, 0), MASK), reference)
    assert torch.equal(fn(s, t, y, MASK), reference)


@pytest.mark.parametrize("name", SUBSET_CASES)
def test_masked_loss_equals_loss_on_valid_subset(name):
    fn = CASES[name]
    s, t, y = _inputs()
    subset = fn(s[MASK], t[MASK], y[MASK], None)
    torch.testing.assert_close(fn(s, t, y, MASK), subset, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", list(CASES))
def test_teacher_gets_no_gradient(name):
    fn = CASES[name]
    s, t, y = _inputs()
    s.requires_grad_(True)
    t.requires_grad_(True)
    fn(s, t, y, MASK).backward()
    assert t.grad is None
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert (s.grad[~MASK] == 0).all()  # masked positions get no gradient either
