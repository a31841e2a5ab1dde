"""Hungarian matching (DETR; D-FINE's HungarianMatcher with focal class costs) and GO-LSD's union
of matches across decoder layers."""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torchvision.ops import box_convert, generalized_box_iou

#: (query indices, ground-truth indices) of one image, both int64 (k,)
Match = tuple[Tensor, Tensor]


def hungarian_match(
    logits: Tensor, boxes: Tensor, gt_labels: list[Tensor], gt_boxes: list[Tensor], **costs: float
) -> list[Match]:
    """`hungarian_match_sets` for one prediction set: logits (B, Q, C), boxes (B, Q, 4)."""
    return hungarian_match_sets(logits[None], boxes[None], gt_labels, gt_boxes, **costs)[0]


@torch.no_grad()
def hungarian_match_sets(
    logits: Tensor, boxes: Tensor, gt_labels: list[Tensor], gt_boxes: list[Tensor],
    cost_class: float = 2.0, cost_bbox: float = 5.0, cost_giou: float = 2.0,
    alpha: float = 0.25, gamma: float = 2.0,
) -> list[list[Match]]:
    """One-to-one assignment per image minimising 2·focal class + 5·L1 + 2·(−GIoU) costs.

    Args:
        logits: (S, B, Q, C) sigmoid class logits of S prediction sets (decoder layers) at once.
        boxes: (S, B, Q, 4) predicted cx, cy, w, h.
        gt_labels: per image (n_i,) class indices.
        gt_boxes: per image (n_i, 4) cx, cy, w, h.

    Returns:
        Per set, per image (query indices, ground-truth indices).
    """
    s, b, q, _ = logits.shape
    sizes = [len(t) for t in gt_labels]
    if sum(sizes) == 0:
        empty = torch.empty(0, dtype=torch.long)
        return [[(empty, empty) for _ in range(b)] for _ in range(s)]
    prob = logits.flatten(0, 2).float().sigmoid()  # (S·B·Q, C)
    labels = torch.cat(gt_labels)
    targets = torch.cat(gt_boxes).float()
    p = prob[:, labels]
    neg = (1 - alpha) * p**gamma * -(1 - p + 1e-8).log()
    pos = alpha * (1 - p) ** gamma * -(p + 1e-8).log()
    out = boxes.flatten(0, 2).float()
    giou = generalized_box_iou(box_convert(out, "cxcywh", "xyxy"), box_convert(targets, "cxcywh", "xyxy"))
    cost = cost_bbox * torch.cdist(out, targets, p=1) + cost_class * (pos - neg) - cost_giou * giou
    parts = np.split(cost.view(s, b, q, -1).cpu().numpy(), np.cumsum(sizes)[:-1], axis=-1)
    sets = []
    for k in range(s):
        matches = []
        for i, part in enumerate(parts):
            rows, cols = linear_sum_assignment(part[k, i])
            matches.append((torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)))
        sets.append(matches)
    return sets


def union_matches(per_layer: list[list[Match]]) -> list[Match]:
    """GO-LSD's union: every (query, GT) pair matched in any layer; a query matched to several
    GTs keeps its most frequent one (ties: the smallest GT index)."""
    union = []
    for image in zip(*per_layer, strict=True):
        votes: dict[int, Counter[int]] = {}
        for rows, cols in image:
            for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
                votes.setdefault(r, Counter())[c] += 1
        pairs = sorted((r, min(cnt, key=lambda c: (-cnt[c], c))) for r, cnt in votes.items())
        rows_t = torch.tensor([r for r, _ in pairs], dtype=torch.long)
        cols_t = torch.tensor([c for _, c in pairs], dtype=torch.long)
        union.append((rows_t, cols_t))
    return union
