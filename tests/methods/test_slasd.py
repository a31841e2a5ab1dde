"""SLA-SD (kdbench/methods/slasd.py) and the classification task's `label_augmentation`: the input
transformations and joint labels as exact tensors, the joint forward pass and the aggregated
classifier against per-copy passes, the method's terms, the tasks it refuses, and runs on the
smoke card (digits) and on a CIFAR-100 fixture of the standard card."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from kdbench.adapters import TASKS, get_adapter
from kdbench.adapters.base import why_not_served
from kdbench.adapters.classification import label_augmentation as LA
from kdbench.adapters.classification.adapter import Batch
from kdbench.adapters.classification.data import write_cifar100_fixture
from kdbench.cli import main
from kdbench.losses import sla_joint_ce, sla_sd
from kdbench.methods import get_method
from kdbench.methods.base import MethodContext, RunState
from kdbench.outputs import Head, Outputs
from kdbench.protocol import load_protocol
from tests.losses.lossref import kl, log_softmax, softmax

STATE = RunState(epoch=0, epochs=2, step=0, steps=10)


def test_square_images_are_rotated_by_0_90_180_270_degrees_sample_major() -> None:
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]], [[[5.0, 6.0], [7.0, 8.0]]]])  # (2, 1, 2, 2)
    got = LA.transform(x)
    assert got.shape == (8, 1, 2, 2)
    first = [[[1.0, 2.0], [3.0, 4.0]], [[2.0, 4.0], [1.0, 3.0]], [[4.0, 3.0], [2.0, 1.0]], [[3.0, 1.0], [4.0, 2.0]]]
    second = [[[5.0, 6.0], [7.0, 8.0]], [[6.0, 8.0], [5.0, 7.0]], [[8.0, 7.0], [6.0, 5.0]], [[7.0, 5.0], [8.0, 6.0]]]
    assert torch.equal(got[:, 0], torch.tensor(first + second))  # counter-clockwise, as torch.rot90(x, m, (2, 3))
    big = torch.arange(2 * 3 * 3 * 3, dtype=torch.float32).view(2, 3, 3, 3)  # 3 channels: each turned alike
    out = LA.transform(big).view(2, 4, 3, 3, 3)
    n = 3
    for b in range(2):
        for c in range(3):
            img = big[b, c].tolist()
            turned = img
            for m in range(4):
                assert out[b, m, c].tolist() == turned, (b, c, m)
                turned = [[turned[j][n - 1 - i] for j in range(n)] for i in range(n)]  # one more 90° turn


def test_signals_are_reversed_negated_and_both() -> None:
    x = torch.tensor([[[1.0, 2.0, 3.0]], [[0.0, -4.0, 5.0]]])  # (2, 1, 3)
    want = torch.tensor([[[1.0, 2.0, 3.0]], [[3.0, 2.0, 1.0]], [[-1.0, -2.0, -3.0]], [[-3.0, -2.0, -1.0]],
                         [[0.0, -4.0, 5.0]], [[5.0, -4.0, 0.0]], [[-0.0, 4.0, -5.0]], [[-5.0, 4.0, -0.0]]])
    assert torch.equal(LA.transform(x), want)


def test_joint_labels_and_the_shapes_no_group_applies_to() -> None:
    assert LA.joint_labels(torch.tensor([2, 0, 9]), 4).tolist() == [[8, 9, 10, 11], [0, 1, 2, 3], [36, 37, 38, 39]]
    assert LA.views((1, 40)) == 4 and LA.views((3, 32, 32)) == 4
    with pytest.raises(ValueError, match="need square images, got 4×6"):
        LA.views((1, 4, 6))
    with pytest.raises(ValueError, match="no SLA transformation"):
        LA.transform(torch.zeros(2, 5))


def _adapter(card: str = "smoke"):  # type: ignore[no-untyped-def]
    adapter = get_adapter("classification")(load_protocol("classification", card), None, torch.device("cpu"))
    adapter.configure(get_method("slasd").needs)
    return adapter


def test_the_joint_forward_pass_and_its_outputs() -> None:
    adapter = _adapter()
    torch.manual_seed(0)
    student = adapter.build_model("student", get_method("slasd").needs).eval()  # eval: BN per row
    torch.manual_seed(0)
    plain = adapter.build_model("student", frozenset())
    assert student.joint_fc is not None and student.joint_fc.out_features == 10 * 4 and plain.joint_fc is None
    weights = student.state_dict()
    assert set(weights) - set(plain.state_dict()) == {"joint_fc.weight", "joint_fc.bias"}
    assert all(torch.equal(weights[k], v) for k, v in plain.state_dict().items())  # the same seed, the same rest
    x = adapter.train_set.images[:3]
    y = adapter.train_set.labels[:3]
    with torch.no_grad():
        out = adapter.forward(student, Batch(x, y, torch.arange(3)))
        ref = student(x)
    assert torch.allclose(out.heads["cls"].logits, ref.logits, atol=1e-6)  # the single head on untransformed rows
    assert torch.equal(out.heads["cls"].target, y) and out.heads["cls"].kind == "categorical"
    joint = out.auxiliary["joint"][-1]["cls"]
    assert joint.logits.shape == (3, 4, 40) and joint.kind == "categorical"
    assert torch.equal(joint.target, y[:, None] * 4 + torch.arange(4))
    with torch.no_grad():
        for m in range(4):
            copy = torch.rot90(x, m, (2, 3))
            assert torch.allclose(joint.logits[:, m], student(copy, joint=True).joint_logits, atol=1e-5), m
        assert ref.joint_logits is None  # a plain call (inference, FLOPs) does not run the joint head
    assert out.features["embedding"].shape == (3, student.widths[-1])  # features of the untransformed rows
    assert set(out.heads) == {"cls"} and not out.layers


def test_the_aggregated_classifier_in_evaluation() -> None:
    adapter = _adapter()
    torch.manual_seed(0)
    student = adapter.build_model("student", get_method("slasd").needs).eval()
    x = adapter.val_set.images
    got = adapter._aggregated(student, x)
    with torch.no_grad():
        per_copy = [student(torch.rot90(x, m, (2, 3)), joint=True).joint_logits for m in range(4)]
    want = torch.stack([sum(per_copy[m][:, k * 4 + m] for m in range(4)) / 4 for k in range(10)], dim=1)
    assert torch.allclose(got, want, atol=1e-5)
    metrics = adapter.evaluate(student, "val")
    agg = 100 * (want.argmax(1) == adapter.val_set.labels).double().mean().item()
    assert math.isclose(metrics["agg_top1"], agg, abs_tol=1e-9) and "top1" in metrics
    assert "agg_top1" not in adapter.evaluate(adapter.build_model("student", frozenset()), "val")


def test_the_terms_by_hand() -> None:
    g = torch.Generator().manual_seed(0)
    single = torch.randn(2, 3, generator=g, dtype=torch.float64)
    joint = torch.randn(2, 2, 6, generator=g, dtype=torch.float64)  # K = 3, M = 2
    y = torch.tensor([2, 1])
    target = y[:, None] * 2 + torch.arange(2)
    out = Outputs(heads={"cls": Head(single, y, kind="categorical")},
                  auxiliary={"joint": [{"cls": Head(joint, target, kind="categorical")}]})
    cls = get_method("slasd")
    assert cls.Config() == cls.Config(temperature=1.0, large_loss=False, ce_weight=1.0)
    method = cls(cls.Config(temperature=2.0), MethodContext(out.detach(), None, 10, 2))
    terms = method.loss(out, None, 0.0, STATE)
    assert set(terms) == {"slasd_joint/cls", "slasd/cls"} and method.ce_weight() == 1.0
    z, j = single.tolist(), joint.tolist()
    joint_ce = sum(-log_softmax(j[b][m])[target[b, m].item()] for b in range(2) for m in range(2)) / 4
    agg = [[(j[b][0][k * 2] + j[b][1][k * 2 + 1]) / 2 for k in range(3)] for b in range(2)]
    sd = sum(4 * kl(softmax([v / 2 for v in agg[b]]), softmax([v / 2 for v in z[b]])) for b in range(2)) / 2
    assert math.isclose(terms["slasd_joint/cls"].item(), joint_ce, rel_tol=0, abs_tol=1e-12)
    assert math.isclose(terms["slasd/cls"].item(), sd, rel_tol=0, abs_tol=1e-12)
    large = cls(cls.Config(large_loss=True), MethodContext(out.detach(), None, 10, 2)).loss(out, None, 0.0, STATE)
    assert math.isclose(large["slasd_joint/cls"].item(), 2 * sla_joint_ce(joint, target).item(), rel_tol=1e-15)
    assert torch.equal(large["slasd/cls"], sla_sd(single, joint, 1.0))
    with pytest.raises(ValueError, match="joint head of the task's label_augmentation"):
        method.loss(Outputs(heads=out.heads), None, 0.0, STATE)


def test_no_gradient_reaches_the_joint_head_through_the_distillation_target() -> None:
    adapter = _adapter()
    torch.manual_seed(0)
    student = adapter.build_model("student", get_method("slasd").needs)
    batch = next(iter(adapter.train_batches(8, torch.Generator().manual_seed(0))))
    out = adapter.forward(student, batch)
    cls = get_method("slasd")
    method = cls(cls.Config(), MethodContext(out.detach(), None, adapter.train_size, 2))
    method.loss(out, None, 0.0, STATE)["slasd/cls"].backward()
    assert student.joint_fc.weight.grad is None  # the aggregate is detached
    assert student.fc.weight.grad is not None and student.fc.weight.grad.abs().sum() > 0


def test_every_other_task_refuses_it_for_label_augmentation() -> None:
    cls = get_method("slasd")
    assert why_not_served(get_adapter("classification"), cls) is None
    for task in sorted(set(TASKS) - {"classification"}):
        why = why_not_served(get_adapter(task), cls)
        assert why is not None and "it needs label_augmentation" in why, task


def test_a_run_on_the_smoke_card_reports_the_single_head_and_the_aggregate(tmp_path: Path) -> None:
    argv = ["run", "--task", "classification", "--protocol", "smoke", "--device", "cpu", "--method", "slasd",
            "--results", str(tmp_path)]
    assert main(argv) == 0
    record = json.loads((tmp_path / "classification/smoke/slasd/seed0.json").read_text())
    assert record["status"] == "ok" and record["metrics"]["primary"] == "top1"
    assert {"top1", "agg_top1"} <= set(record["metrics"]["values"])
    assert all({"task/cls", "slasd_joint/cls", "slasd/cls"} <= set(h["terms"]) for h in record["history"])


def test_a_run_on_a_cifar100_fixture_rotates_the_32x32_images(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_cifar100_fixture(root, n_train=24, n_test=12)
    argv = ["run", "--task", "classification", "--protocol", "standard", "--device", "cpu", "--method", "slasd",
            "--data-root", str(root), "--results", str(tmp_path / "res"),
            "--set", "train.epochs=1", "--set", "train.batch_size=12", "--set", "data.val_size=6"]
    assert main(argv) == 0
    [path] = (tmp_path / "res").glob("classification/*/slasd/seed0.json")
    record = json.loads(path.read_text())
    assert record["status"] == "ok" and record["student"]["arch"] == "resnet8x4"
    assert "agg_top1" in record["metrics"]["values"]
