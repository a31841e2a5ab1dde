"""OFA-KD (kdbench/methods/ofakd.py): its branches' shapes and architecture per student stage, its
terms, where its gradients go, the tasks it refuses, and a run with a teacher of another
architecture family (transformer1d) than the CNN student on the classification smoke card."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from kdbench.adapters import get_adapter
from kdbench.adapters.base import why_not_served
from kdbench.adapters.classification.models import build_model
from kdbench.cli import main
from kdbench.losses import ofa
from kdbench.methods import get_method
from kdbench.methods.base import MethodContext, RunState
from kdbench.methods.ofakd import OFAKD, Block, SepConv
from kdbench.outputs import Head, Outputs
from kdbench.protocol import apply_overrides, load_protocol
from kdbench.runner.teachers import teacher_key

K = 10
STATE = RunState(epoch=0, epochs=2, step=0, steps=10)


def _outputs(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Outputs:
    out = model(x)
    return Outputs(heads={"cls": Head(out.logits, y, kind="categorical")}, features=dict(out.features))


def _pair(student_arch: str, teacher_arch: str, x: torch.Tensor, **student_kwargs: object):
    torch.manual_seed(0)
    student = build_model(student_arch, K, x.shape[1], widths=(8, 8, 16), **student_kwargs)
    teacher = build_model(teacher_arch, K, x.shape[1], widths=(16, 32, 48)).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    y = torch.arange(len(x)) % K
    return student, teacher, y


def _method(s_out: Outputs, t_out: Outputs, **config: object) -> OFAKD:
    ctx = MethodContext(s_out.detach(), t_out.detach(), 100, 2)
    return OFAKD(OFAKD.Config(**config), ctx)  # type: ignore[arg-type]


def _count(module: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in module.modules())


@pytest.mark.parametrize(("arch", "x"), [("convnet", torch.randn(4, 1, 8, 8)), ("convnet1d", torch.randn(4, 1, 40))])
def test_cnn_branches_downsample_once_per_later_stage_to_the_wider_embedding(arch: str, x: torch.Tensor) -> None:
    """Stage i of N: N − i SepConvs (the last to max(d_S, d_T)), the last stage a 1×1 conv; then
    pooling and Linear(max(d_S, d_T), K): (B, K) logits from every stage, 2-D or 1-D maps."""
    student, teacher, y = _pair(arch, "transformer1d", x)
    s_out, t_out = _outputs(student, x, y), _outputs(teacher, x, y)
    method = _method(s_out, t_out)
    branches = method.branches["cls"]
    assert list(branches) == ["stage1", "stage2", "stage3"]
    assert [_count(branches[s], SepConv) for s in branches] == [2, 1, 0]
    width = max(16, 48)  # student embedding 16, teacher's 48
    for name, branch in branches.items():
        assert branch[-1].in_features == width and branch[-1].out_features == K, name
        assert _count(branch, Block) == 0
    conv = nn.Conv1d if x.dim() == 3 else nn.Conv2d
    assert isinstance(branches["stage3"][0], conv) and branches["stage3"][0].kernel_size in ((1,), (1, 1))
    first = branches["stage1"][0].op
    assert first[0].stride in ((2,), (2, 2)) and first[0].groups == 8 and first[5].out_channels == 16
    assert branches["stage1"][1].op[5].out_channels == width
    logits = method.branch_logits(s_out, "cls")
    assert {k: tuple(v.shape) for k, v in logits.items()} == {s: (len(x), K) for s in branches}


def test_vit_branches_on_pooled_vectors_and_on_token_maps() -> None:
    """Pooled (B, D) features (the OOD encoder) go through max(N − i, 1) Transformer blocks as one
    token; with branch 'vit' a transformer1d student's (B, C, N) maps are N tokens, projected to
    d_S where C differs."""
    x = torch.randn(4, 1, 40)
    student, teacher, y = _pair("transformer1d", "convnet1d", x, heads=2)
    s_out, t_out = _outputs(student, x, y), _outputs(teacher, x, y)
    method = _method(s_out, t_out, branch="vit", heads=2)
    branches = method.branches["cls"]
    assert [_count(branches[s], Block) for s in branches] == [2, 1, 1]
    assert [_count(branches[s], SepConv) for s in branches] == [0, 0, 0]
    assert isinstance(branches["stage1"][1], nn.Sequential)  # 8 channels → d_S 16
    assert isinstance(branches["stage3"][1], nn.Identity)  # already 16
    assert all(b[-1].in_features == 16 and b[-1].out_features == K for b in branches.values())
    assert all(v.shape == (4, K) for v in method.branch_logits(s_out, "cls").values())

    pooled = Outputs(heads=s_out.heads, features={n: f.mean(-1) if f.dim() == 3 else f
                                                  for n, f in s_out.features.items()})
    method = _method(pooled, t_out, heads=4)  # auto: vectors get the ViT branch
    assert [_count(method.branches["cls"][s], Block) for s in ("stage1", "stage2", "stage3")] == [2, 1, 1]
    assert all(v.shape == (4, K) for v in method.branch_logits(pooled, "cls").values())


def test_terms_are_the_final_and_the_branch_ofa_losses_towards_the_teachers_final_logits() -> None:
    x = torch.randn(6, 1, 8, 8)
    student, teacher, y = _pair("convnet", "transformer1d", x)
    s_out, t_out = _outputs(student, x, y), _outputs(teacher, x, y)
    method = _method(s_out, t_out, eps=1.5, temperature=2.0, kd_weight=0.5, ofa_weight=3.0, stages="stage1,stage3")
    assert list(method.branches["cls"]) == ["stage1", "stage3"]
    assert _count(method.branches["cls"]["stage1"], SepConv) == 2  # sized by its place among all three stages
    terms = method.loss(s_out, t_out, 0.5, STATE)
    assert set(terms) == {"ofakd/cls", "ofakd_branch/cls"}
    z_t = t_out.heads["cls"].logits
    torch.testing.assert_close(terms["ofakd/cls"], 0.5 * ofa(s_out.heads["cls"].logits, z_t, y, 1.5, 2.0))
    branch = sum(ofa(z, z_t, y, 1.5, 2.0) for z in method.branch_logits(s_out, "cls").values())
    torch.testing.assert_close(terms["ofakd_branch/cls"], 3.0 * branch)
    assert method.task_weight("cls", 0.5) == 1.0 and OFAKD.Config().ce_weight == 1.0


def test_gradients_reach_the_student_and_the_branches_never_the_teacher() -> None:
    x = torch.randn(6, 1, 8, 8)
    student, teacher, y = _pair("convnet", "transformer1d", x)
    s_out, t_out = _outputs(student, x, y), _outputs(teacher, x, y)
    method = _method(s_out, t_out)
    terms = method.loss(s_out, t_out, 0.5, STATE)
    terms["ofakd_branch/cls"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.parameters() if p.dim() > 1)
    assert student.stages[0][0][0].weight.grad.abs().sum() > 0  # the branch reaches stage 1
    assert student.fc.weight.grad is None  # the branch terms do not touch the final head
    assert all(p.grad is None for p in teacher.parameters())


def test_configurations_it_cannot_build_are_refused_by_name() -> None:
    x = torch.randn(4, 1, 8, 8)
    student, teacher, y = _pair("convnet", "convnet", x)
    s_out, t_out = _outputs(student, x, y), _outputs(teacher, x, y)
    with pytest.raises(ValueError, match="stages stage4 not among the student's stage1, stage2, stage3"):
        _method(s_out, t_out, stages="stage1,stage4")
    with pytest.raises(ValueError, match="branch 'mlp'; valid: auto, cnn, vit"):
        _method(s_out, t_out, branch="mlp")
    with pytest.raises(ValueError, match="heads 3 does not divide"):
        _method(s_out, t_out, branch="vit", heads=3)
    pooled = Outputs(heads=s_out.heads, features={"stage1": torch.zeros(4, 8), "embedding": torch.zeros(4, 16)})
    with pytest.raises(ValueError, match="branch 'cnn' needs"):
        _method(pooled, t_out, branch="cnn")
    with pytest.raises(ValueError, match="needs the student's stage<i> features and its embedding"):
        _method(Outputs(heads=s_out.heads, features={"c3": torch.zeros(4, 8, 2, 2)}), t_out)


def test_it_serves_classification_and_ood_and_refuses_the_other_tasks_with_the_reason() -> None:
    cls = get_method("ofakd")
    assert why_not_served(get_adapter("classification"), cls) is None
    assert why_not_served(get_adapter("ood"), cls) is None
    for task in ("detection", "pose", "translation"):
        why = why_not_served(get_adapter(task), cls)
        assert why is not None and "sample_heads" in why, task
    assert "features" in (why_not_served(get_adapter("translation"), cls) or "")


def test_the_teacher_architecture_is_part_of_the_cached_teachers_key() -> None:
    smoke = load_protocol("classification", "smoke")
    other = apply_overrides(smoke, {"teacher.arch": "transformer1d"})
    assert other.card["teacher"]["arch"] == "transformer1d" and other.key != smoke.key
    assert teacher_key(other, "classification", 0) != teacher_key(smoke, "classification", 0)


def test_ofakd_with_a_transformer_teacher_on_the_cnn_smoke_card(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The heterogeneous pair OFA-KD is for: the smoke card's ConvNet student, a transformer1d
    teacher through `--set teacher.arch=...` (an ablation of the card, its own cached teacher)."""
    argv = ["run", "--task", "classification", "--protocol", "smoke", "--device", "cpu", "--method", "ofakd",
            "--results", str(tmp_path), "--set", "teacher.arch=transformer1d"]
    assert main(argv) == 0
    [path] = tmp_path.glob("classification/smoke+*/ofakd/seed0.json")
    record = json.loads(path.read_text())
    assert record["status"] == "ok" and record["error"] is None
    assert record["teacher"]["arch"] == "transformer1d" and record["student"]["arch"] == "convnet"
    assert all({"task/cls", "ofakd/cls", "ofakd_branch/cls"} <= set(h["terms"]) for h in record["history"])
    teacher_record = json.loads(next(tmp_path.glob("classification/smoke+*/teacher/seed0.json")).read_text())
    assert teacher_record["student"]["arch"] == "transformer1d"  # the teacher's own row
    assert main([*argv[:-1], "teacher.arch=mlp"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "unknown architecture 'mlp'; valid: convnet, convnet1d" in err and "transformer1d" in err
