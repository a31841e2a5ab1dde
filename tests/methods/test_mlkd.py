"""MLKD at the clinc150 card's settings: τ 1.0 as the official CLINC150 script (microsoft/KC,
papers/MLKD_OOD: main_ood.py's default; 0.5 is the SST script's), both terms by hand in float64."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kdbench.methods import get_method
from kdbench.methods.base import MethodContext, RunState, make_config
from kdbench.outputs import Head, Outputs
from kdbench.protocol import load_protocol
from tests.losses.lossref import kl, rows, scaled, softmax

B, K, DS, DT = 4, 3, 2, 3
S_NAMES, T_NAMES = ("embedding", "stage1", "stage2"), ("embedding", "stage1", "stage2", "stage3")


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _outputs(logits: torch.Tensor, names: tuple[str, ...], width: int, seed: int) -> Outputs:
    feats = {n: _randn(B, width, seed=seed + i) for i, n in enumerate(names)}
    return Outputs(heads={"cls": Head(logits, torch.tensor([0, 1, 2, 1]), kind="categorical")}, features=feats)


def _card() -> dict[str, object]:
    return load_protocol("ood", "clinc150").method_hparams("mlkd")


def test_the_clinc150_card_sets_the_official_clinc150_temperature() -> None:
    assert _card() == {"learn_weights": True, "temperature": 1.0}
    assert get_method("mlkd").Config().temperature == 1.0  # the official default (main_ood.py)


def _linear(layer: nn.Linear, x: list[float]) -> list[float]:
    return [sum(w * v for w, v in zip(row, x, strict=True)) + b
            for row, b in zip(rows(layer.weight), layer.bias.tolist(), strict=True)]


def test_both_terms_by_hand_at_the_card_settings() -> None:
    student = _outputs(_randn(B, K, seed=0), S_NAMES, DS, seed=10)
    teacher = _outputs(3 * _randn(B, K, seed=1), T_NAMES, DT, seed=20)
    cls = get_method("mlkd")
    method = cls(make_config(cls.Config, _card()), MethodContext(student, teacher, B, 1)).double()
    terms = method.loss(student, teacher, 0.0, RunState(0, 1, 0, 1))
    # prediction layer at τ = 1: mean over samples of KL(σ(z_T) ‖ σ(z_S)), no τ² factor
    pred = [kl(softmax(scaled(t, 1.0)), softmax(scaled(s, 1.0)))
            for s, t in zip(rows(student.heads["cls"].logits), rows(teacher.heads["cls"].logits), strict=True)]
    assert math.isclose(float(terms["mlkd_pred/cls"].detach()), sum(pred) / B, rel_tol=0, abs_tol=1e-12)
    # similarity: per student layer and sample, the 2 smallest of m_ij = mean_D (h_S,i − Linear_ij(h_T,j))²
    # over the 4 teacher layers, each weight 1 at the start (learn_weights: 4·softmax(0) = 1)
    sim = 0.0
    for i, s_name in enumerate(S_NAMES):
        per_sample = []
        for n in range(B):
            h_s = rows(student.features[s_name])[n]
            m = []
            for j, t_name in enumerate(T_NAMES):
                mapped = _linear(method.maps[i][j], rows(teacher.features[t_name])[n])
                m.append(sum((a - b) ** 2 for a, b in zip(h_s, mapped, strict=True)) / DS)
            per_sample.append(sum(sorted(m)[:2]))
        sim += sum(per_sample) / B
    assert math.isclose(float(terms["mlkd_sim"].detach()), sim, rel_tol=0, abs_tol=1e-12)


def test_no_gradient_into_the_teacher_and_the_maps_learn() -> None:
    student = _outputs(_randn(B, K, seed=2).requires_grad_(True), S_NAMES, DS, seed=30)
    teacher = _outputs(_randn(B, K, seed=3).requires_grad_(True), T_NAMES, DT, seed=40)
    # (teacher features come from a no-grad pass in the runner; the maps are trained through them)
    cls = get_method("mlkd")
    method = cls(make_config(cls.Config, _card()), MethodContext(student, teacher, B, 1)).double()
    sum(method.loss(student, teacher, 0.0, RunState(0, 1, 0, 1)).values()).backward()
    assert teacher.heads["cls"].logits.grad is None
    assert student.heads["cls"].logits.grad is not None
    assert any(m.weight.grad is not None for row in method.maps for m in row)
    assert method.layer_logits.grad is not None  # learn_weights: the bounded weights are trained
    same = method.loss(_outputs(teacher.heads["cls"].logits.detach(), S_NAMES, DS, seed=30),
                       teacher, 0.0, RunState(0, 1, 0, 1))
    assert float(same["mlkd_pred/cls"].detach()) == pytest.approx(0.0, abs=1e-12)
