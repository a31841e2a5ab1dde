"""Detection end to end on the smoke tier, and the adapter's Outputs contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kdbench.adapters.detection.adapter import DetectionAdapter
from kdbench.cli import main
from kdbench.methods import get_method
from kdbench.protocol import load_protocol
from kdbench.records import validation_errors
from tests.datafiles import data_root


@pytest.fixture(scope="module")
def adapter() -> DetectionAdapter:
    return DetectionAdapter(load_protocol("detection", "smoke"), None, torch.device("cpu"))


@pytest.fixture(scope="module")
def gold_adapter() -> DetectionAdapter:
    """The adapter as a GO-LSD run configures it: union matching requested."""
    gold = get_method("gold")
    adapter = DetectionAdapter(load_protocol("detection", "smoke"), None, torch.device("cpu"))
    adapter.configure(gold.needs | gold.requests)
    return adapter


def test_outputs_heads_layers_and_ddf_weights(gold_adapter: DetectionAdapter) -> None:
    adapter = gold_adapter
    torch.manual_seed(0)
    model = adapter.build_model("student", frozenset({"layers"}))
    batch = next(adapter.train_batches(4, torch.Generator().manual_seed(0)))
    out = adapter.forward(model, batch)
    assert set(out.heads) == {"cls", "box"} and len(out.layers) == 3 and out.layers[-1] is out.heads
    box = out.layers[0]["box"]
    assert box.logits.shape[-2:] == (4, 17) and box.matched is not None and box.weight is not None
    matched = box.matched[..., 0]
    assert int(matched.sum()) >= sum(len(b) for b in batch.boxes)  # the union covers every GT
    conf = out.raw.logits[-1].sigmoid().max(-1).values  # type: ignore[union-attr]
    assert torch.allclose(box.weight[..., 0][~matched], conf[~matched])  # unmatched: final confidence
    assert ((box.weight[..., 0][matched] >= 0) & (box.weight[..., 0][matched] <= 1)).all()  # matched: IoU
    cls = out.heads["cls"]
    assert cls.mask is not None and int(cls.mask.sum()) == sum(len(b) for b in batch.boxes)
    terms = adapter.task_loss(out)
    assert {"cls", "l1", "giou", "fgl", "aux/vfl", "aux/l1", "aux/giou", "aux/fgl"} == set(terms)
    assert all(torch.isfinite(v) for v in terms.values())


def test_the_union_and_ddf_weights_are_computed_only_on_request(
    adapter: DetectionAdapter, gold_adapter: DetectionAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without GO-LSD's `union_matching` request, `forward` matches no union and weighs no box, and
    everything else it returns, and the task loss on each layer's own matches, is what the
    requesting adapter's outputs give bit for bit."""
    import kdbench.adapters.detection.adapter as module

    assert adapter.honours == {"union_matching"} and not adapter.union and gold_adapter.union
    torch.manual_seed(0)
    model = adapter.build_model("student", frozenset({"layers"}))
    batch = next(adapter.train_batches(4, torch.Generator().manual_seed(0)))
    torch.manual_seed(1)
    asked = gold_adapter.forward(model, batch)
    monkeypatch.setattr(module, "union_matches", lambda *_: pytest.fail("union matching without the request"))
    torch.manual_seed(1)
    plain = adapter.forward(model, batch)
    assert plain.union == [] and plain.union_pairs is None and asked.union_pairs is not None
    for mine, theirs in zip(plain.layers, asked.layers, strict=True):
        assert mine["box"].weight is None and mine["box"].matched is None
        assert theirs["box"].weight is not None and theirs["box"].matched is not None
        for name in ("cls", "box"):
            for part in ("logits", "target", "mask"):
                a, b = getattr(mine[name], part), getattr(theirs[name], part)
                assert (a is None and b is None) or torch.equal(a, b), (name, part)
    assert asked.raw is not None and asked.pre_pairs is not None
    own = adapter.loss(asked.raw, batch, asked.pairs, asked.pre_pairs, None, asked.enc_pairs, asked.dn_pairs)
    terms = adapter.task_loss(plain)
    assert terms.keys() == own.keys() and all(torch.equal(terms[k], own[k]) for k in own)
    assert not torch.equal(gold_adapter.task_loss(asked)["l1"], own["l1"])  # the union's box losses differ


def test_teacher_is_aligned_by_ground_truth_matches(adapter: DetectionAdapter) -> None:
    torch.manual_seed(0)
    student = adapter.build_model("student", frozenset())
    teacher = adapter.build_model("teacher", frozenset()).eval()
    batch = next(adapter.train_batches(4, torch.Generator().manual_seed(1)))
    s_out, t_out = adapter.forward(student, batch), adapter.forward(teacher, batch)
    aligned = adapter.align(s_out, t_out)
    for b, ((s_rows, s_cols), (t_rows, t_cols)) in enumerate(zip(s_out.matches[-1], t_out.matches[-1], strict=True)):
        t_of_gt = dict(zip(t_cols.tolist(), t_rows.tolist(), strict=True))
        for q, g in zip(s_rows.tolist(), s_cols.tolist(), strict=True):
            assert torch.equal(aligned.heads["cls"].logits[b, q], t_out.heads["cls"].logits[b, t_of_gt[g]])
            assert torch.equal(aligned.heads["box"].logits[b, q], t_out.heads["box"].logits[b, t_of_gt[g]])
    assert torch.equal(aligned.heads["cls"].mask, s_out.heads["cls"].mask)  # type: ignore[arg-type]


@pytest.mark.parametrize("method", ["gold", "baseline", "kd"])
def test_smoke_run_end_to_end(method: str, results: Path) -> None:
    argv = ["run", "--task", "detection", "--method", method, "--protocol", "smoke", "--device", "cpu",
            "--results", str(results)]
    assert main(argv) == 0
    record = json.loads((results / "detection" / "smoke" / method / "seed0.json").read_text())
    assert not validation_errors(record)
    assert record["metrics"]["primary"] == "ap" and 0 <= record["metrics"]["values"]["ap"] <= 1
    terms = record["history"][-1]["terms"]
    if method == "gold":
        assert "gold/box" in terms and "gold/cls" not in terms
    if method == "kd":
        # the class head (binary) by BCKD's binary distillation, the box edges by KL over bins
        assert {"kd/cls", "kd/box"} <= set(terms) and record["teacher"]["arch"].startswith("fdr-detr/")


@pytest.mark.parametrize("method", ["pskd", "uskd", "ls"])
def test_methods_detection_cannot_serve_are_refused_before_training(
    method: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--task", "detection", "--method", method, "--protocol", "smoke"]) == 2
    assert "task 'detection' cannot serve method" in capsys.readouterr().err


def test_standard_card_reads_coco_format_files(tmp_path: Path) -> None:
    fixtures = data_root("coco-fixtures") / "coco-fixtures"  # resolved: links in tmp_path need an absolute target
    data = tmp_path / "coco"
    (data / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        (data / "annotations" / f"instances_{split}2017.json").symlink_to(fixtures / "test_coco.json")
        (data / f"{split}2017").symlink_to(fixtures, target_is_directory=True)
    argv = ["run", "--task", "detection", "--method", "gold", "--protocol", "standard", "--device", "cpu",
            "--data-root", str(data), "--results", str(tmp_path / "res"), "--set", "data.size=128",
            "--set", "student.queries=10", "--set", "train.epochs=1", "--set", "train.batch_size=2",
            "--set", "data.val_images=1"]
    assert main(argv) == 0
    [path] = (tmp_path / "res" / "detection").glob("coco2017+*/gold/seed0.json")  # --set: an ablation key
    record = json.loads(path.read_text())
    assert record["student"]["arch"].startswith("fdr-detr/hgnetv2_b0") and record["tier"] == "standard"
    assert not validation_errors(record)


def test_encoder_proposals_are_matched_trained_and_in_the_union() -> None:
    """With query selection the proposals get their own matches (in GO-LSD's union, as in D-FINE's
    criterion) and VFL + L1 + GIoU in the aux terms (query selection is the model's default)."""
    from kdbench.adapters.detection.matcher import hungarian_match

    adapter = DetectionAdapter(load_protocol("detection", "smoke"), None, torch.device("cpu"))
    adapter.configure(frozenset({"layers", "union_matching"}))
    torch.manual_seed(0)
    model = adapter.build_model("student", frozenset())
    batch = next(adapter.train_batches(4, torch.Generator().manual_seed(0)))
    out = adapter.forward(model, batch)
    assert out.enc_pairs is not None and out.union is not None
    enc = hungarian_match(out.raw.enc_logits, out.raw.enc_boxes, batch.labels, batch.boxes, **adapter.matcher)
    for (rows, _), (u_rows, _) in zip(enc, out.union, strict=True):
        assert set(u_rows.tolist()) >= set(rows.tolist())  # every proposal match's query is in the union
    terms = adapter.task_loss(out)
    without = adapter.loss(out.raw, batch, out.pairs, out.pre_pairs, out.union_pairs, None)
    assert set(terms) == set(without)
    assert float(terms["aux/vfl"].detach()) > float(without["aux/vfl"].detach())
    assert float(terms["aux/l1"].detach()) > float(without["aux/l1"].detach())
    assert torch.equal(terms["cls"], without["cls"])
    sum(terms.values()).backward()
    assert model.enc_score_head.weight.grad.abs().sum() > 0
    assert model.enc_bbox_head[-1].weight.grad.abs().sum() > 0
