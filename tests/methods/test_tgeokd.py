"""TGeo-KD as the official Chengming0501/TGeo-KD: the `Controller` fusion network (src/network.py),
the `state_design` option-3 inputs and the fused `lower_loss` (src/fusion_ratio_bilevel.py), the
training-set class means t̄, the joint update of the CIFAR-100 code, and the refused bilevel one."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from kdbench.adapters import TASKS, get_adapter
from kdbench.adapters.base import why_not_served
from kdbench.cli import main
from kdbench.errors import UsageError
from kdbench.losses import fused_kd
from kdbench.methods import get_method
from kdbench.methods.base import MethodContext, RunState, make_config
from kdbench.outputs import Head, Outputs
from tests.losses.lossref import flat, kl, log_softmax, rows, scaled, sigmoid, softmax

B, K = 6, 3
Y = torch.tensor([0, 2, 1, 2, 0, 2])
STATE = RunState(0, 1, 0, 1)


def _randn(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _outputs(logits: torch.Tensor, target: torch.Tensor = Y, mask: torch.Tensor | None = None) -> Outputs:
    return Outputs(heads={"cls": Head(logits, target, mask=mask, kind="categorical")})


def _method(**overrides: object) -> nn.Module:
    cls = get_method("tgeokd")
    probe = _outputs(torch.zeros(B, K))
    return cls(make_config(cls.Config, overrides), MethodContext(probe, probe, B, 1)).double()


TEACHER_PASS = [(_randn(4, K, seed=10, scale=2.0), torch.tensor([0, 1, 0, 2])),
                (_randn(3, K, seed=11, scale=2.0), torch.tensor([2, 0, 2]))]


def _prepared(**overrides: object) -> nn.Module:
    method = _method(**overrides)
    method.prepare(lambda: (_outputs(z, y) for z, y in TEACHER_PASS))
    return method


def test_fusion_network_is_the_official_controller() -> None:
    lin1, act1, lin2, act2, lin3, out = _method().fusion["cls"]
    assert isinstance(lin1, nn.Linear) and (lin1.in_features, lin1.out_features) == (9 * K, 32)
    assert isinstance(lin2, nn.Linear) and (lin2.in_features, lin2.out_features) == (32, 16)
    assert isinstance(lin3, nn.Linear) and (lin3.in_features, lin3.out_features) == (16, 1)
    assert isinstance(act1, nn.LeakyReLU) and isinstance(act2, nn.LeakyReLU) and act1.negative_slope == 0.01
    assert isinstance(out, nn.Sigmoid)
    config = get_method("tgeokd").Config()
    assert (config.temperature, config.update, config.ce_weight) == (1.5, "joint", 0.0)


def test_prepare_keeps_the_teachers_class_means_of_the_training_set() -> None:
    table = rows(_prepared().prototypes("cls"))
    by_class: dict[int, list[list[float]]] = {0: [], 1: [], 2: []}
    for z, y in TEACHER_PASS:
        for row, label in zip(rows(z), flat(y), strict=True):
            by_class[label].append(softmax(row))
    for c in range(K):
        want = [sum(p[k] for p in by_class[c]) / len(by_class[c]) for k in range(K)]
        assert all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(table[c], want, strict=True)), c


def _mlp_by_hand(x: list[float], layers: list[nn.Linear]) -> float:
    for i, layer in enumerate(layers):
        w, b = rows(layer.weight), layer.bias.tolist()
        x = [sum(wi * xi for wi, xi in zip(row, x, strict=True)) + bi for row, bi in zip(w, b, strict=True)]
        if i < len(layers) - 1:
            x = [v if v > 0 else 0.01 * v for v in x]
    return sigmoid(x[0])


@pytest.mark.parametrize("temp", [1.5, 4.0])
def test_the_term_by_hand_for_fixed_fusion_weights(temp: float) -> None:
    method = _prepared(temperature=temp)
    layers = [m for m in method.fusion["cls"] if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for i, layer in enumerate(layers):
            layer.weight.copy_(_randn(*layer.weight.shape, seed=20 + i, scale=0.8))
            layer.bias.copy_(_randn(*layer.bias.shape, seed=30 + i, scale=0.3))
    z_s, z_t = _randn(B, K, seed=0, scale=2.0), _randn(B, K, seed=1, scale=3.0)
    value = float(method.loss(_outputs(z_s), _outputs(z_t), 0.0, STATE)["tgeokd/cls"].detach())
    protos = rows(method.prototypes("cls"))
    per, alphas = [], []
    for zs, zt, label in zip(rows(z_s), rows(z_t), flat(Y), strict=True):
        s, t, tb = softmax(zs), softmax(zt), protos[label]
        g = [1.0 if k == label else 0.0 for k in range(K)]

        def sq(a: list[float], b: list[float]) -> list[float]:
            return [(u - v) ** 2 for u, v in zip(a, b, strict=True)]

        alpha = _mlp_by_hand(s + t + g + tb + sq(tb, s) + sq(g, s) + sq(t, s) + sq(t, g) + sq(tb, g), layers)
        kd_i = temp**2 * kl(softmax(scaled(zt, 1 / temp)), softmax(scaled(zs, 1 / temp)))
        per.append(alpha * kd_i + (1 - alpha) * -log_softmax(zs)[label])
        alphas.append(alpha)
    assert len({round(a, 6) for a in alphas}) == B  # sample-wise ratios, not one per batch
    assert math.isclose(value, sum(per) / B, rel_tol=1e-12)


@pytest.mark.parametrize("scale", [0.1, 3.0, 30.0])
def test_the_fusion_ratio_lies_in_the_open_unit_interval(scale: float) -> None:
    method = _prepared()
    z_s, z_t = _randn(B, K, seed=2, scale=scale), _randn(B, K, seed=3, scale=scale)
    alpha = method.fusion_ratio("cls", z_s, z_t, Y, None)
    assert alpha.shape == (B,) and bool(((alpha > 0) & (alpha < 1)).all())


def test_joint_update_trains_the_fusion_network_and_the_student_sees_a_fixed_ratio() -> None:
    method = _prepared()
    z_s = _randn(B, K, seed=4, scale=2.0).requires_grad_(True)
    z_t = _randn(B, K, seed=5, scale=2.0).requires_grad_(True)
    method.loss(_outputs(z_s), _outputs(z_t), 0.0, STATE)["tgeokd/cls"].backward()
    grads = [p.grad for p in method.fusion.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(g is not None and g.abs().sum() > 0 for g in grads)  # the fusion network learns
    assert z_t.grad is None  # no gradient into the teacher
    assert z_s.grad is not None
    alpha = method.fusion_ratio("cls", z_s, z_t, Y, None).detach()  # the state is detached from the student
    fixed = z_s.detach().clone().requires_grad_(True)
    fused_kd(fixed, z_t, Y, alpha, 1.5).backward()
    assert fixed.grad is not None and torch.allclose(z_s.grad, fixed.grad, rtol=1e-12, atol=1e-15)
    assert sum(p.numel() for p in method.parameters() if p.requires_grad) == 9 * K * 32 + 32 + 32 * 16 + 16 + 17


def test_masked_samples_change_neither_the_term_nor_the_fusion_gradient() -> None:
    method = _prepared()
    keep = torch.tensor([True, False, True, True, False, True])
    results = []
    for garbage in (None, float("nan")):
        method.zero_grad()
        z_s, z_t = _randn(B, K, seed=6, scale=2.0), _randn(B, K, seed=7, scale=2.0)
        if garbage is not None:
            z_s[~keep], z_t[~keep] = garbage, garbage
        term = method.loss(_outputs(z_s), _outputs(z_t, mask=keep), 0.0, STATE)["tgeokd/cls"]
        term.backward()
        results.append((term.detach(), [p.grad.clone() for p in method.fusion.parameters() if p.grad is not None]))
    assert torch.isfinite(results[1][0]) and torch.equal(results[0][0], results[1][0])
    assert len(results[1][1]) == 6 and all(torch.equal(a, b) for a, b in zip(*(r[1] for r in results), strict=True))


def test_the_hard_label_term_is_not_counted_twice() -> None:
    method = _method()
    assert method.task_weight("cls", 0.0) == 0.0  # the method's (1 − α)·CE replaces the runner's CE
    assert method.task_weight("layer0/cls", 0.0) == 1.0  # deep supervision keeps its weight


def test_the_papers_bilevel_update_is_refused_loudly() -> None:
    cls = get_method("tgeokd")
    with pytest.raises(UsageError, match=r"bilevel' is refused: .*validation set.*training batches only"):
        make_config(cls.Config, {"update": "bilevel"})
    with pytest.raises(UsageError, match="update must be one of joint, bilevel, got 'meta'"):
        make_config(cls.Config, {"update": "meta"})


def test_the_bilevel_refusal_is_one_line_before_any_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["run", "--task", "classification", "--protocol", "smoke", "--method", "tgeokd",
            "--set", "method.update=bilevel", "--results", str(tmp_path / "results"), "--device", "cpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tgeokd update 'bilevel' is refused" in err[0]
    assert not (tmp_path / "results").exists()


def test_served_on_sample_level_categorical_tasks_only() -> None:
    cls = get_method("tgeokd")
    served = {task for task in TASKS if why_not_served(get_adapter(task), cls) is None}
    assert served == {"classification", "ood"}
    for task in ("translation", "detection", "pose"):
        assert "sample_heads" in (why_not_served(get_adapter(task), cls) or "")
