"""DHKD as the official penghui-yang/DHKD: the NonLinearClassifier auxiliary head (models/classifier.py)
and the gradient alignment of `--ga` (helper/optimizer.py), by hand in float64."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from kdbench.cli import main
from kdbench.methods import get_method
from kdbench.methods.base import MethodContext, RunState, make_config
from kdbench.outputs import Head, Outputs
from tests.losses.lossref import rows, sigmoid

B, D, K = 4, 3, 5


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _outputs(logits: torch.Tensor, emb: torch.Tensor) -> Outputs:
    return Outputs(heads={"cls": Head(logits, torch.tensor([0, 1, 2, 1]), kind="categorical")},
                   features={"embedding": emb})


def _method(**overrides: object) -> nn.Module:
    cls = get_method("dhkd")
    probe = _outputs(torch.zeros(B, K), torch.zeros(B, D))
    return cls(make_config(cls.Config, overrides), MethodContext(probe, probe, B, 1)).double()


def test_auxiliary_head_is_the_official_nonlinear_classifier() -> None:
    lin1, drop, bn, relu, lin2 = _method().aux["cls"]
    assert isinstance(lin1, nn.Linear) and (lin1.in_features, lin1.out_features) == (D, 200)
    assert isinstance(drop, nn.Dropout) and drop.p == 0.1
    assert isinstance(bn, nn.BatchNorm1d) and bn.num_features == 200
    assert isinstance(relu, nn.ReLU)
    assert isinstance(lin2, nn.Linear) and (lin2.in_features, lin2.out_features) == (200, K)
    linear = _method(nonlinear="false").aux["cls"]
    assert isinstance(linear, nn.Linear) and (linear.in_features, linear.out_features) == (D, K)
    assert get_method("dhkd").Config().ga is False  # the official --ga flag's default


def _head_by_hand(x: list[float], w1: list[list[float]], b1: list[float], w2: list[list[float]],
                  b2: list[float]) -> list[float]:
    """Eval mode: dropout off, BatchNorm with its initial running mean 0 / variance 1 (ε 1e-5)."""
    hidden = [max(0.0, (sum(w * v for w, v in zip(row, x, strict=True)) + b) / math.sqrt(1 + 1e-5))
              for row, b in zip(w1, b1, strict=True)]
    return [sum(w * h for w, h in zip(row, hidden, strict=True)) + b for row, b in zip(w2, b2, strict=True)]


@pytest.mark.parametrize(("alpha", "temp"), [(1.0, 2.0), (0.5, 4.0)])
def test_dhkd_term_by_hand_through_the_auxiliary_head(alpha: float, temp: float) -> None:
    method = _method(alpha=alpha, temperature=temp).eval()
    lin1, _, _, _, lin2 = method.aux["cls"]
    emb, z_t, z_s = _randn(B, D, seed=0), 3 * _randn(B, K, seed=1), _randn(B, K, seed=2)
    terms = method.loss(_outputs(z_s, emb), _outputs(z_t, emb), 0.0, RunState(0, 1, 0, 1))
    value = float(terms["dhkd/cls"].detach())
    w1, b1, w2, b2 = rows(lin1.weight), lin1.bias.tolist(), rows(lin2.weight), lin2.bias.tolist()
    per = []
    for x, t in zip(rows(emb), rows(z_t), strict=True):
        aux = _head_by_hand(x, w1, b1, w2, b2)
        ds = [sigmoid((a - b) / temp) for a, b in zip(aux, t, strict=True)]
        per.append(temp**2 * sum(0.5 * math.log(0.5 / d) + 0.5 * math.log(0.5 / (1 - d)) for d in ds))
    assert math.isclose(value, alpha * sum(per) / len(per), rel_tol=1e-12, abs_tol=1e-12)


def _toy(ga: bool, flip: float = 1.0) -> tuple[list[nn.Parameter], list[list[float]]]:
    """task = Σ a_i·p1_i² + c·p2, kd = Σ b_i·p1_i + e·p3 (p4 reached by neither), one step of
    `backward`; returns the parameters and the gradients as lists."""
    p1 = nn.Parameter(torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64))
    p2 = nn.Parameter(torch.tensor([0.5], dtype=torch.float64))
    p3 = nn.Parameter(torch.tensor([-1.0, 4.0], dtype=torch.float64))
    p4 = nn.Parameter(torch.tensor([7.0], dtype=torch.float64))
    a = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
    b = flip * torch.tensor([-2.0, 1.0, 1.0], dtype=torch.float64)
    e = torch.tensor([0.5, -1.0], dtype=torch.float64)
    terms = {"task/cls": (a * p1**2).sum() + 3.0 * p2.sum(), "dhkd/cls": (b * p1).sum() + (e * p3).sum()}
    params = [p1, p2, p3, p4]
    _method(ga=ga).backward(torch.stack(list(terms.values())).sum(), terms, params)
    return params, [[] if p.grad is None else p.grad.tolist() for p in params]


def test_gradient_alignment_projects_a_conflicting_kd_gradient_by_hand() -> None:
    _, grads = _toy(ga=True)
    # g_task = (2·a_i·p1_i; 3; 0, 0; 0), g_kd = (b_i; 0; e; 0) with p1 = (1, 2, −1)
    g_task = [2 * 1.0 * 1.0, 2 * -0.5 * 2.0, 2 * 2.0 * -1.0, 3.0, 0.0, 0.0, 0.0]  # (2, −2, −4, 3, 0, 0, 0)
    g_kd = [-2.0, 1.0, 1.0, 0.0, 0.5, -1.0, 0.0]
    dot = sum(x * y for x, y in zip(g_kd, g_task, strict=True))
    assert dot == -4 - 2 - 4  # −10 < 0: the official code projects g_kd
    norm2 = sum(x * x for x in g_task)  # 4 + 4 + 16 + 9 = 33
    merged = [t + (k - dot / norm2 * t) for t, k in zip(g_task, g_kd, strict=True)]
    got = [v for g in grads for v in g]
    assert all(math.isclose(x, y, rel_tol=0, abs_tol=1e-14) for x, y in zip(got, merged, strict=True)), got
    projected = [k - dot / norm2 * t for t, k in zip(g_task, g_kd, strict=True)]
    assert abs(sum(x * y for x, y in zip(projected, g_task, strict=True))) < 1e-12  # now orthogonal
    assert grads[3] == [0.0]  # every stepped parameter gets its part (0 here), as _set_grad


def test_gradient_alignment_keeps_an_agreeing_kd_gradient_and_off_is_one_backward() -> None:
    _, aligned = _toy(ga=True, flip=-1.0)  # g_kd·g_task = +10: nothing projected
    _, plain = _toy(ga=False, flip=-1.0)
    by_hand = [[2.0 + 2.0, -2.0 - 1.0, -4.0 - 1.0], [3.0], [0.5, -1.0], [0.0]]
    assert aligned == by_hand
    assert plain[:3] == by_hand[:3] and plain[3] == []  # one backward: an unreached parameter has no grad
    _, conflicting_plain = _toy(ga=False)
    assert conflicting_plain[0] == [2.0 - 2.0, -2.0 + 1.0, -4.0 + 1.0]  # ga off: the plain sum


@pytest.mark.parametrize("ga", [False, True])
def test_no_gradient_into_the_teacher_and_no_kd_gradient_into_the_main_head(ga: bool) -> None:
    method = _method(ga=ga)
    model = nn.Linear(D, K).double()  # the student's main head on its embedding
    emb = _randn(B, D, seed=3).requires_grad_(True)
    z_t = _randn(B, K, seed=4).requires_grad_(True)
    student = _outputs(model(emb), emb)
    teacher = _outputs(z_t, _randn(B, D, seed=5).requires_grad_(True))
    terms = method.loss(student, teacher, 0.0, RunState(0, 1, 0, 1))
    params = [*model.parameters(), *method.parameters()]
    method.backward(sum(terms.values()), terms, params)  # the KD term alone: no task term here
    assert z_t.grad is None and teacher.features["embedding"].grad is None
    assert model.weight.grad is None or not model.weight.grad.any()  # the main head gets no KD term
    aux_grads = [p.grad for p in method.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in aux_grads)
    assert any(g.any() for g in aux_grads if g is not None)


def test_the_runner_steps_with_the_methods_backward_on_the_smoke_card(
    results: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cls = get_method("dhkd")
    original, calls = cls.backward, []

    def counted(self: nn.Module, loss: torch.Tensor, terms: dict[str, torch.Tensor],
                params: list[nn.Parameter]) -> None:
        calls.append(sorted(terms))
        original(self, loss, terms, params)

    monkeypatch.setattr(cls, "backward", counted)
    argv = ["run", "--task", "classification", "--protocol", "smoke", "--device", "cpu", "--method", "dhkd",
            "--set", "method.ga=true", "--results", str(results)]
    assert main(argv) == 0
    (path,) = results.glob("classification/smoke*/dhkd/seed0.json")
    record = json.loads(path.read_text())
    assert record["status"] == "ok" and record["method"]["hparams"]["ga"] is True
    assert len(calls) == 2 * 5 and calls[0] == ["dhkd/cls", "task/cls"]  # 2 epochs × 160/32 steps
