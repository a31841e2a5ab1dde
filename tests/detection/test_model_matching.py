"""The FDR-DETR's decoding contract, Hungarian and union matching, and teacher alignment."""

from __future__ import annotations

import torch

from kdbench.adapters.detection.fdr import distance2bbox, integral
from kdbench.adapters.detection.matcher import hungarian_match, hungarian_match_sets, union_matches
from kdbench.adapters.detection.model import FDRDetector


def _model(**kw: bool) -> FDRDetector:
    torch.manual_seed(0)
    return FDRDetector(3, widths=(8, 8, 16, 16), dim=32, heads=2, ffn=32, layers=3, queries=6, reg_max=8, **kw)


def test_every_layer_decodes_its_distributions_from_the_detached_initial_box() -> None:
    model = _model()
    out = model(torch.rand(2, 3, 32, 32))
    assert out.logits.shape == (3, 2, 6, 3) and out.corners.shape == (3, 2, 6, 4, 9)
    for layer in range(3):
        expected = distance2bbox(out.pre_boxes, integral(out.corners[layer], model.project), model.reg_scale)
        assert torch.allclose(out.boxes[layer], expected, atol=1e-6)
    # zero-initialised corner heads: every layer starts at the initial box
    assert torch.allclose(out.boxes[0], out.pre_boxes, atol=1e-6)
    # the boxes' gradient never reaches the pre-box head (its box is detached), the corners' does
    out.boxes[-1].sum().backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.pre_box_head.parameters())


def test_distributions_are_refined_residually() -> None:
    model = _model()
    for head in model.corner_heads:
        torch.nn.init.normal_(head[-1].weight, std=0.1)
    out = model(torch.rand(1, 3, 32, 32))
    # L^l − L^{l−1} is the l-th head's output alone, so the last layer differs from the first
    assert not torch.allclose(out.corners[2], out.corners[0])


def test_hungarian_finds_the_obvious_assignment() -> None:
    boxes = torch.tensor([[[0.2, 0.2, 0.1, 0.1], [0.7, 0.7, 0.2, 0.2], [0.5, 0.5, 0.3, 0.3]]])
    logits = torch.full((1, 3, 2), -4.0)
    gt_boxes = [torch.tensor([[0.7, 0.7, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1]])]
    gt_labels = [torch.tensor([1, 0])]
    (rows, cols), = hungarian_match(logits, boxes, gt_labels, gt_boxes)
    assert dict(zip(rows.tolist(), cols.tolist(), strict=True)) == {0: 1, 1: 0}
    stacked = hungarian_match_sets(torch.stack([logits, logits]), torch.stack([boxes, boxes]), gt_labels, gt_boxes)
    assert [(r.tolist(), c.tolist()) for r, c in stacked[1]] == [(rows.tolist(), cols.tolist())]


def test_union_keeps_each_querys_most_frequent_ground_truth() -> None:
    t = torch.tensor
    layers = [[(t([0, 1]), t([0, 1]))], [(t([0, 2]), t([1, 0]))], [(t([0, 1]), t([0, 1]))]]
    (rows, cols), = union_matches(layers)
    # query 0: GT 0 twice, GT 1 once → 0; query 1 → 1; query 2 → 0 (matched once)
    assert rows.tolist() == [0, 1, 2] and cols.tolist() == [0, 1, 0]


def test_selected_queries_are_the_top_scoring_memory_tokens() -> None:
    """D-FINE's query selection: the Q tokens with the highest max class score, their content and
    reference boxes detached; the proposals' scores and boxes keep their gradient."""
    from kdbench.adapters.detection.model import token_anchors

    model = _model()
    images = torch.rand(2, 3, 32, 32)
    memory, _, _, shapes = model._memory(images)
    tokens = model.enc_output(memory)
    scores = model.enc_score_head(tokens)
    top = scores.max(-1).values.topk(6, dim=1).indices
    content, ref_logits, enc_logits, enc_boxes = model._select(memory, shapes)
    for b in range(2):
        assert torch.equal(content[b], tokens[b, top[b]].detach())
        assert torch.equal(enc_logits[b], scores[b, top[b]])
    anchors = token_anchors(shapes, images.device)[0]
    assert anchors.shape == (sum(h * w for h, w in shapes), 4)
    # zero-initialised box head: each proposal starts at its token's anchor
    assert torch.allclose(enc_boxes, anchors[top].sigmoid(), atol=1e-6)
    assert not content.requires_grad and not ref_logits.requires_grad
    assert enc_logits.requires_grad and enc_boxes.requires_grad
    out = model(images)
    assert out.enc_logits is not None and out.enc_boxes is not None
    assert out.enc_logits.shape == (2, 6, 3) and out.enc_boxes.shape == (2, 6, 4)
    # the decoder starts from the proposals' boxes: its first layer's boxes equal pre_boxes
    assert torch.allclose(out.boxes[0], out.pre_boxes, atol=1e-6)


def test_learnt_queries_have_no_proposals() -> None:
    out = _model(query_select=False)(torch.rand(1, 3, 32, 32))
    assert out.enc_logits is None and out.enc_boxes is None
