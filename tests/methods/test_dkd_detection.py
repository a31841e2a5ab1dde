"""The detection cards run DKD with mdistiller's detection settings (megvii-research/mdistiller,
detection/model/config.py: α 1, β 0.25, T 1; rcnn.py: no warm-up), checked by hand in float64 on
a softmax (categorical) head, the kind mdistiller's ROI head is. kdbench's detector has no such
head: its class head is binary (VFL's sigmoids), which DKD does not distil, so on detection these
settings apply to the box head's edge distributions, re-expressed on the student's bins
(tests/detection/test_shared_frame.py)."""

from __future__ import annotations

import math

import pytest
import torch

from kdbench.methods import get_method
from kdbench.methods.base import MethodContext, RunState, make_config
from kdbench.outputs import Head, Outputs
from kdbench.protocol import load_protocol, task_cards
from tests.losses.lossref import kl, rows, softmax

OFFICIAL = {"alpha": 1.0, "beta": 0.25, "temperature": 1.0, "warmup_epochs": 0}
B, Q, K = 2, 3, 4


@pytest.mark.parametrize("card", sorted(task_cards("detection")))
def test_every_detection_card_sets_mdistillers_detection_dkd(card: str) -> None:
    assert load_protocol("detection", card).method_hparams("dkd") == OFFICIAL


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _head(logits: torch.Tensor, mask: torch.Tensor) -> Outputs:
    target = torch.tensor([[0, 3, 1], [2, 2, 0]])
    return Outputs(heads={"cls": Head(logits, target, mask=mask, kind="categorical")})


def _dkd_by_hand(s: list[float], t: list[float], y: int, alpha: float, beta: float) -> float:
    """T = 1: α·KL(b_T ‖ b_S) + β·KL(p̂_T ‖ p̂_S), b the target/rest split, p̂ over the other classes."""
    p_s, p_t = softmax(s), softmax(t)
    tckd = kl([p_t[y], 1 - p_t[y]], [p_s[y], 1 - p_s[y]])
    rest_s = softmax([v for k, v in enumerate(s) if k != y])
    rest_t = softmax([v for k, v in enumerate(t) if k != y])
    return alpha * tckd + beta * kl(rest_t, rest_s)


def test_dkd_at_the_detection_settings_by_hand_with_no_warm_up() -> None:
    student_mask = torch.tensor([[True, True, False], [True, False, True]])
    teacher_mask = torch.tensor([[True, False, True], [True, True, True]])  # the aligned teacher's matches
    z_s, z_t = 2 * _randn(B, Q, K, seed=0), 3 * _randn(B, Q, K, seed=1)
    student, teacher = _head(z_s, student_mask), _head(z_t, teacher_mask)
    cls = get_method("dkd")
    config = make_config(cls.Config, load_protocol("detection", "small").method_hparams("dkd"))
    method = cls(config, MethodContext(student, teacher, B, 16))
    targets = [0, 3, 1, 2, 2, 0]
    valid = [a and b for a, b in zip(student_mask.flatten().tolist(), teacher_mask.flatten().tolist(), strict=True)]
    per = [_dkd_by_hand(s, t, y, 1.0, 0.25)
           for s, t, y, ok in zip(rows(z_s), rows(z_t), targets, valid, strict=True) if ok]
    expected = sum(per) / len(per)  # the mean over positions both heads mark valid
    for epoch in (0, 1, 15):  # no warm-up: the full term from the first epoch
        value = float(method.loss(student, teacher, 0.0, RunState(epoch, 16, 0, 1))["dkd/cls"])
        assert math.isclose(value, expected, rel_tol=0, abs_tol=1e-12), (epoch, value, expected)


def test_no_gradient_into_the_teacher_at_the_detection_settings() -> None:
    mask = torch.ones(B, Q, dtype=torch.bool)
    z_s = _randn(B, Q, K, seed=2).requires_grad_(True)
    z_t = _randn(B, Q, K, seed=3).requires_grad_(True)
    cls = get_method("dkd")
    method = cls(make_config(cls.Config, OFFICIAL), MethodContext(_head(z_s, mask), _head(z_t, mask), B, 1))
    method.loss(_head(z_s, mask), _head(z_t, mask), 0.0, RunState(0, 1, 0, 1))["dkd/cls"].backward()
    assert z_t.grad is None and z_s.grad is not None and torch.isfinite(z_s.grad).all()
    same = method.loss(_head(z_t.detach(), mask), _head(z_t.detach(), mask), 0.0, RunState(0, 1, 0, 1))
    assert float(same["dkd/cls"]) == pytest.approx(0.0, abs=1e-12)
