"""D-FINE's contrastive denoising queries: the groups, their mask and matches, the model with
them, their losses (task and GO-LSD), and the card option end to end."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torchvision.ops import box_convert

from kdbench.adapters.detection import model as model_module
from kdbench.adapters.detection.adapter import DetectionAdapter, noise_seed
from kdbench.adapters.detection.denoising import (
    DenoisingGroup,
    attention_mask,
    cdn_matches,
    contrastive_denoising_group,
    noised_boxes,
)
from kdbench.adapters.detection.losses import DetectionLoss
from kdbench.adapters.detection.model import DetectorOutput, FDRDetector
from kdbench.adapters.detection.targets import Batch, Pairs
from kdbench.cli import main
from kdbench.losses import ddf
from kdbench.methods.base import MethodContext, RunState
from kdbench.methods.gold import GOLD
from kdbench.protocol import load_protocol
from kdbench.records import validation_errors


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _targets() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    labels = [torch.tensor([0, 2, 1]), torch.tensor([1]), torch.tensor([], dtype=torch.long)]
    boxes = [torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.5, 0.1, 0.3], [0.5, 0.7, 0.2, 0.1]]),
             torch.tensor([[0.5, 0.5, 0.4, 0.4]]), torch.empty(0, 4)]
    return labels, boxes


def test_group_shapes_padding_and_positive_indices() -> None:
    labels, boxes = _targets()
    group = contrastive_denoising_group(labels, boxes, 3, 5, 7, 0.0, 0.0, _gen())
    # M = 3 ground truths at most, G = 7 // 3 = 2 groups of 3 positives + 3 negatives: D = 12
    assert (group.max_gt, group.groups, group.size) == (3, 2, 12)
    assert group.labels.shape == (3, 12) and group.boxes.shape == (3, 12, 4) and group.attn_mask.shape == (17, 17)
    # no noise: each group is [gt, pad, negatives of the same]; padding has class C = 3 and box 0
    assert group.labels[1].tolist() == [1, 3, 3] * 4 and group.labels[2].tolist() == [3] * 12
    assert torch.equal(group.boxes[0, 6:9], boxes[0]) and torch.equal(group.boxes[0, 3:6], boxes[0])
    assert group.boxes[1, 1:3].abs().sum() == 0
    # positives: the first n_i of each group's first M
    assert [p.tolist() for p in group.positive] == [[0, 1, 2, 6, 7, 8], [0, 6], []]
    matches = cdn_matches(group, labels)
    assert [g.tolist() for _, g in matches] == [[0, 1, 2, 0, 1, 2], [0, 0], []]
    # fewer budget than objects: one group all the same (official `num_group = 1 if ... == 0`)
    assert contrastive_denoising_group(labels, boxes, 3, 5, 2, 0.0, 0.0, _gen()).groups == 1


def test_empty_batch_gives_an_empty_group() -> None:
    group = contrastive_denoising_group([torch.tensor([], dtype=torch.long)], [torch.empty(0, 4)], 3, 4, 100,
                                        0.5, 1.0, _gen())
    assert (group.size, group.groups) == (0, 0) and group.attn_mask.shape == (4, 4) and not group.attn_mask.any()


def test_box_noise_stays_within_the_official_bounds() -> None:
    # small central boxes, so that no edge is clipped, and s = 0.5, so that no box's edges cross:
    # |Δ| < s·half for positives, in [s·half, 2·s·half) for negatives (half = w/2 or h/2)
    n = 4000
    g = _gen(1)
    boxes = torch.cat([0.4 + 0.2 * torch.rand(1, n, 2, generator=g), 0.05 + 0.1 * torch.rand(1, n, 2, generator=g)], -1)
    negative = (torch.arange(n) % 2 == 1)[None]
    scale = 0.5
    noised = noised_boxes(boxes, negative, scale, _gen(2))
    delta = (box_convert(noised, "cxcywh", "xyxy") - box_convert(boxes, "cxcywh", "xyxy"))[0].abs()
    half = (boxes[0, :, 2:] * 0.5).repeat(1, 2) * scale
    ratio = delta / half  # (n, 4) in units of s·w/2 or s·h/2
    pos, neg = ratio[~negative[0]], ratio[negative[0]]
    eps = 1e-4
    assert pos.max() < 1 + eps and neg.min() > 1 - eps and neg.max() < 2 + eps
    # the draws fill the ranges and both directions occur
    assert pos.max() > 0.95 and pos.min() < 0.05 and neg.max() > 1.95 and neg.min() < 1.05
    signed = (box_convert(noised, "cxcywh", "xyxy") - box_convert(boxes, "cxcywh", "xyxy"))[0]
    assert 0.45 < (signed > 0).float().mean() < 0.55
    assert torch.equal(noised_boxes(boxes, negative, scale, _gen(2)), noised)  # seeded


def test_boxes_are_clipped_to_the_image_and_crossed_edges_swapped() -> None:
    boxes = torch.tensor([[[0.05, 0.95, 0.1, 0.1]]]).repeat(1, 200, 1)
    noised = noised_boxes(boxes, torch.ones(1, 200, dtype=torch.bool), 1.0, _gen())
    xyxy = box_convert(noised, "cxcywh", "xyxy")
    assert xyxy.min() >= 0 and xyxy.max() <= 1 + 1e-6
    # negatives at s = 1 may move x1 past x2: the box is then the one between them (width made positive)
    assert (noised[..., 2:] >= 0).all() and (xyxy[..., 2:] >= xyxy[..., :2]).all()


def test_labels_are_redrawn_at_half_the_noise_ratio() -> None:
    classes, b = 1000, 64
    labels = [torch.randint(0, classes, (4,), generator=_gen(i)) for i in range(b)]
    labels[0] = labels[0][:2]  # two padding slots per group in image 0
    boxes = [torch.full((len(t), 4), 0.3) for t in labels]
    group = contrastive_denoising_group(labels, boxes, classes, 10, 100, 0.5, 0.0, _gen(3))
    clean = contrastive_denoising_group(labels, boxes, classes, 10, 100, 0.0, 0.0, _gen(3))
    real = clean.labels != classes
    changed = (group.labels != clean.labels)[real].float().mean()
    assert abs(float(changed) - 0.25 * (classes - 1) / classes) < 0.02  # 200 queries × 64 images
    assert (group.labels[~real] == classes).all()  # padding is never given a class
    assert group.labels[real].max() < classes


def test_attention_mask_by_hand() -> None:
    # 2 groups of 2·1 queries, then 2 matching queries; True: may not attend
    expected = torch.tensor([
        [0, 0, 1, 1, 0, 0],
        [0, 0, 1, 1, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0, 0],
    ], dtype=torch.bool)
    assert torch.equal(attention_mask(2, 1, 2), expected)
    mask = attention_mask(3, 2, 5)
    d = 12
    assert mask[d:, :d].all() and not mask[:, d:].any()  # matching sees no dn query; dn sees matching
    for g in range(3):
        rows = slice(4 * g, 4 * g + 4)
        assert not mask[rows, rows].any() and int(mask[rows, :d].sum()) == 4 * 8


def _detector(denoising: int = 0, seed: int = 0) -> FDRDetector:
    torch.manual_seed(seed)
    return FDRDetector(3, widths=(8, 8, 16, 16), dim=32, heads=2, ffn=32, layers=3, queries=5, reg_max=8,
                       denoising=denoising)


def _same_fields(a: DetectorOutput, b: DetectorOutput, exact: bool) -> None:
    for name in ("logits", "corners", "boxes", "pre_boxes"):
        x, y = getattr(a, name), getattr(b, name)
        assert torch.equal(x, y) if exact else torch.allclose(x, y, atol=1e-5), name


def test_off_is_the_model_of_today() -> None:
    images = torch.rand(3, 3, 32, 32)
    off, on = _detector(0), _detector(7)
    # the denoising embedding is created last: every other parameter starts the same
    on_state = {k: v for k, v in on.state_dict().items() if not k.startswith("denoising_class_embed")}
    assert on_state.keys() == off.state_dict().keys()
    assert all(torch.equal(v, off.state_dict()[k]) for k, v in on_state.items())
    on.eval()
    off.eval()
    evaluated = on(images, _targets(), _gen())  # eval mode: no denoising queries at all
    assert evaluated.dn is None
    _same_fields(evaluated, off(images), exact=True)
    off.train()
    plain = off(images)
    with_targets = off(images, _targets(), _gen())  # denoising 0: targets are not read
    assert plain.dn is None and with_targets.dn is None
    _same_fields(plain, with_targets, exact=True)


def test_matching_queries_do_not_see_denoising_queries_and_groups_not_each_other(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    images = torch.rand(3, 3, 32, 32)
    model = _detector(7).train()
    for head in model.corner_heads:  # non-zero corners, so that the refinement is exercised
        torch.nn.init.normal_(head[-1].weight, std=0.1)
    out = model(images, _targets(), _gen())
    assert out.dn is not None and out.dn_group is not None
    assert out.logits.shape == (3, 3, 5, 3) and out.dn.logits.shape == (3, 3, 12, 3)
    assert out.boxes.shape[2] == 5 and out.dn.pre_boxes.shape == (3, 12, 4) and out.pre_boxes.shape == (3, 5, 4)
    _same_fields(out, model(images), exact=False)  # the same predictions as without denoising
    # group 1's inputs changed: group 0 and the matching queries are untouched, group 1 is not
    group = out.dn_group
    labels, boxes = group.labels.clone(), group.boxes.clone()
    labels[:, 6:], boxes[:, 6:] = (labels[:, 6:] + 1) % 3, boxes[:, 6:] * 0.5 + 0.2
    changed = replace(group, labels=labels, boxes=boxes)
    monkeypatch.setattr(model_module, "contrastive_denoising_group", lambda *a, **k: changed)
    other = model(images, _targets(), _gen())
    assert other.dn is not None
    _same_fields(other, out, exact=False)
    assert torch.allclose(other.dn.logits[:, :, :6], out.dn.logits[:, :, :6], atol=1e-5)
    assert torch.allclose(other.dn.boxes[:, :, :6], out.dn.boxes[:, :, :6], atol=1e-5)
    assert not torch.allclose(other.dn.logits[:, :, 6:], out.dn.logits[:, :, 6:], atol=1e-3)


def test_denoising_queries_are_refined_from_their_own_initial_boxes() -> None:
    model = _detector(7).train()
    out = model(torch.rand(3, 3, 32, 32), _targets(), _gen())
    assert out.dn is not None and out.dn_group is not None
    # zero-initialised corner heads: every layer starts at the initial box, which the pre-box head
    # (zero-initialised too) puts at the noised box itself
    ref = out.dn_group.boxes.clamp(1e-5, 1 - 1e-5)
    assert torch.allclose(out.dn.pre_boxes, ref, atol=1e-5) and torch.allclose(out.dn.boxes[0], ref, atol=1e-5)


def _tiny_dn(groups: int) -> tuple[DetectorOutput, Batch, Pairs, DenoisingGroup]:
    """One image, one ground truth, `groups` groups of [positive, negative] queries; every box is
    the ground truth exactly, every logit 0, every corner distribution uniform."""
    gt = torch.tensor([[0.5, 0.5, 0.4, 0.2]])
    batch = Batch(torch.zeros(1, 3, 8, 8), [torch.tensor([0])], [gt], torch.tensor([0]))
    d, bins = 2 * groups, 5
    boxes = gt.expand(1, d, 4)
    raw = DetectorOutput(torch.zeros(1, 1, d, 1), torch.zeros(1, 1, d, 4, bins), boxes[None].clone(), boxes.clone(),
                         {}, 4.0, 0.5)
    group = contrastive_denoising_group(batch.labels, batch.boxes, 1, 3, groups, 0.0, 0.0, _gen())
    assert group.groups == groups
    return raw, batch, Pairs.of(cdn_matches(group, batch.labels), batch), group


def test_denoising_loss_by_hand() -> None:
    raw, batch, pairs, _ = _tiny_dn(1)
    loss = DetectionLoss()
    terms = loss._denoising(raw, pairs, batch, 1.0)
    # VFL, layer and pre-box head alike: positive t = IoU 1, weight 1, BCE(0, 1) = log 2;
    # negative t = 0, weight α·σ(0)^γ = 0.75·0.25, BCE(0, 0) = log 2; over 1 box × 1 group
    assert math.isclose(float(terms["dn/vfl"]), 2 * (1 + 0.1875) * math.log(2), rel_tol=1e-6)
    assert float(terms["dn/l1"]) == 0 and abs(float(terms["dn/giou"])) < 1e-6
    # FGL: uniform over N+1 = 5 bins, so each edge's two CEs are log 5 and their weights sum to 1
    assert math.isclose(float(terms["dn/fgl"]), 0.15 * 4 * math.log(5), rel_tol=1e-6)
    # with G groups of the same predictions the normaliser is boxes × G: the same loss
    raw3, batch3, pairs3, group3 = _tiny_dn(3)
    terms3 = loss._denoising(raw3, pairs3, batch3, batch3.num_boxes * group3.groups)
    assert all(math.isclose(float(terms3[k]), float(v), rel_tol=1e-6, abs_tol=1e-7) for k, v in terms.items())


@pytest.fixture(scope="module")
def adapter() -> DetectionAdapter:
    return DetectionAdapter(load_protocol("detection", "smoke"), None, torch.device("cpu"))


def _dn_student(adapter: DetectionAdapter, denoising: int = 6) -> FDRDetector:
    torch.manual_seed(0)
    card = dict(adapter.protocol.card["student"])
    spec = {k: tuple(v) if isinstance(v, list) else v for k, v in card.items() if k != "arch"}
    return FDRDetector(adapter.num_classes, **{**spec, "denoising": denoising})


def test_adapter_outputs_hold_matching_queries_and_denoising_apart(adapter: DetectionAdapter) -> None:
    adapter.configure(frozenset({"layers", "union_matching"}))
    model = _dn_student(adapter).train()
    batch = next(adapter.train_batches(4, _gen()))
    out = adapter.forward(model, batch)
    q = model.queries
    assert all(h.logits.shape[1] == q for layer in out.layers for h in layer.values())  # what methods see
    stack = out.auxiliary["denoising"]
    assert out.raw is not None and out.raw.dn_group is not None and out.dn_pairs is not None
    d = out.raw.dn_group.size
    assert len(stack) == len(out.layers) and all(h.logits.shape[1] == d for layer in stack for h in layer.values())
    n_gt = sum(len(b) for b in batch.boxes)
    assert len(out.dn_pairs) == n_gt * out.raw.dn_group.groups
    box = stack[0]["box"]
    assert box.matched is not None and int(box.matched[..., 0].sum()) == len(out.dn_pairs)
    terms = adapter.task_loss(out)
    assert {"dn/vfl", "dn/l1", "dn/giou", "dn/fgl"} <= set(terms) and all(torch.isfinite(v) for v in terms.values())
    # the matching queries' terms are those of the same weights without denoising
    off = copy.deepcopy(model)
    off.denoising = 0
    plain = adapter.task_loss(adapter.forward(off, batch))
    assert set(plain) == set(terms) - {"dn/vfl", "dn/l1", "dn/giou", "dn/fgl"}
    assert all(torch.allclose(plain[k], terms[k], atol=1e-5) for k in plain)
    # seeded per batch: the same batch twice gives the same denoising queries, another seed others
    again = adapter.forward(model, batch)
    assert again.raw is not None and torch.equal(again.raw.dn.boxes, out.raw.dn.boxes)  # type: ignore[union-attr]
    assert batch.noise_seeds is not None
    other = adapter.forward(model, replace(batch, noise_seeds=batch.noise_seeds + 1))
    assert other.raw is not None and not torch.equal(other.raw.dn.boxes, out.raw.dn.boxes)  # type: ignore[union-attr]
    # a teacher aligned to the student carries no denoising queries
    teacher = adapter.build_model("teacher", frozenset()).eval()
    aligned = adapter.align(out, adapter.forward(teacher, batch))
    assert not aligned.auxiliary and aligned.heads["box"].logits.shape[1] == q


def test_noise_seeds_are_per_position_and_leave_the_data_alone(adapter: DetectionAdapter) -> None:
    batches = list(adapter.train_batches(16, _gen(5)))
    seeds = [int(s) for b in batches for s in b.noise_seeds]  # type: ignore[union-attr]
    assert len(set(seeds)) == len(seeds) == adapter.train_size
    assert seeds == [noise_seed(5, k) for k in range(adapter.train_size)] and seeds[0] != noise_seed(6, 0)
    # reading the generator's seed draws nothing from it: the data order is as without denoising
    g = _gen(5)
    order = torch.randperm(adapter.train_size, generator=g)
    assert torch.equal(torch.cat([b.ids for b in batches]), order)


def test_gold_distils_the_denoising_layers_with_the_matching_queries_counts(adapter: DetectionAdapter) -> None:
    adapter.configure(frozenset({"layers", "union_matching"}))
    model = _dn_student(adapter).train()
    for head in model.corner_heads:  # layers that differ, so that there is something to distil
        torch.nn.init.normal_(head[-1].weight, std=0.1)
    out = adapter.forward(model, next(adapter.train_batches(4, _gen())))
    gold = GOLD(GOLD.Config(heads="box"), MethodContext(out.detach(), None, 48, 2))
    terms = gold.loss(out, None, 0.0, RunState(0, 2, 0, 6))
    assert set(terms) == {"gold/box", "gold/box/denoising"}
    final = out.heads["box"]
    assert final.matched is not None
    n_m = final.matched.sum().float()
    counts = (n_m, final.matched.numel() - n_m)
    stack = out.auxiliary["denoising"]
    expected = sum(1.5 * ddf(h["box"].logits.flatten(0, 2), stack[-1]["box"].logits.flatten(0, 2),
                             h["box"].weight.flatten(), h["box"].matched.flatten(), 5.0, counts)  # type: ignore[union-attr]
                   for h in stack[:-1])
    assert float(terms["gold/box/denoising"].detach()) > 0
    assert torch.allclose(terms["gold/box/denoising"], torch.as_tensor(expected), rtol=1e-5)
    own = sum(1.5 * ddf(h["box"].logits.flatten(0, 2), stack[-1]["box"].logits.flatten(0, 2),
                        h["box"].weight.flatten(), h["box"].matched.flatten(), 5.0)  # type: ignore[union-attr]
              for h in stack[:-1])
    assert not torch.allclose(terms["gold/box/denoising"], torch.as_tensor(own), rtol=1e-3)
    terms["gold/box/denoising"].backward()  # the last denoising layer is the teacher: no gradient into it
    assert model.corner_heads[-1][-1].weight.grad is None or model.corner_heads[-1][-1].weight.grad.abs().sum() == 0


def test_ddf_counts_replace_the_own_counts() -> None:
    g = _gen(4)
    s, t = torch.randn(10, 4, 6, generator=g), torch.randn(10, 4, 6, generator=g)
    w, matched = torch.rand(10, generator=g), torch.arange(10) < 3
    assert torch.equal(ddf(s, t, w, matched), ddf(s, t, w, matched, counts=(torch.tensor(3.0), torch.tensor(7.0))))
    both = ddf(s, t, w, matched, counts=(torch.tensor(16.0), torch.tensor(16.0)))
    assert torch.allclose(both, (ddf(s[:3], t[:3], w[:3]) + ddf(s[3:], t[3:], w[3:])) / 2)


@pytest.mark.parametrize("card", ["smoke", "small"])
def test_card_option_is_typed_and_bad_values_are_one_line(card: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert "denoising" not in load_protocol("detection", card).card["student"]  # off: the card as it was
    for bad, words in (("student.denoising=-1", "must be ≥ 0"), ("teacher.label_noise=1.5", "must be ≤ 1"),
                       ("student.box_noise=-0.5", "must be ≥ 0")):
        assert main(["run", "--task", "detection", "--protocol", card, "--method", "baseline", "--set", bad]) == 2
        err = capsys.readouterr().err
        assert words in err and bad.split("=")[0].split(".")[1] in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("method", "sets"), [
    ("gold", ["student.denoising=6"]),
    ("kd", ["student.denoising=6", "teacher.denoising=6", "student.label_noise=0.25", "student.box_noise=0.5"]),
])
def test_smoke_run_with_denoising(method: str, sets: list[str], results: Path) -> None:
    argv = ["run", "--task", "detection", "--method", method, "--protocol", "smoke", "--device", "cpu",
            "--results", str(results)]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 0
    [path] = (results / "detection").glob(f"smoke+*/{method}/seed0.json")
    record = json.loads(path.read_text())
    assert not validation_errors(record) and record["status"] == "ok"
    assert record["student"]["arch"].endswith("/dn6")
    terms = record["history"][-1]["terms"]
    assert {"task/dn/vfl", "task/dn/l1", "task/dn/giou", "task/dn/fgl"} <= set(terms)
    assert all(math.isfinite(v) for v in terms.values())
    if method == "gold":
        assert "gold/box/denoising" in terms
    else:
        assert record["teacher"]["arch"].endswith("/dn6") and "gold/box/denoising" not in terms
