"""Contrastive denoising (CDN) training queries, as D-FINE trains its decoder (from DINO / RT-DETR).

Peng et al., "D-FINE", ICLR 2025; Zhang et al., "DINO: DETR with Improved DeNoising Anchor Boxes",
ICLR 2023 (contrastive denoising). Follows Peterande/D-FINE 4a1f73a,
src/zoo/dfine/denoising.py `get_contrastive_denoising_training_group` (lines 11-121) and
src/zoo/dfine/dfine_criterion.py `get_cdn_matched_indices` (lines 470-492); the model side
(`FDRDetector.forward`) follows dfine_decoder.py lines 797-799 and 881-888, the losses
(`DetectionLoss`) dfine_criterion.py lines 401-434.

With M = the most ground-truth boxes of an image in the batch and G = max(1, ⌊num_denoising / M⌋)
groups, every image gets D = 2·M·G denoising queries: per group, M positive queries (its ground
truths, padded to M) then M negative ones (the same ground truths). Each query's class is flipped
to a uniformly drawn class with probability label_noise / 2 (the draw may hit the true class, as
in the official code), and each edge of its box (x1, y1, x2, y2) moves by ±u·box_noise·(w/2 or
h/2), u ~ U[0, 1) for positives and U[1, 2) for negatives; the box is then clipped to the image.
Positives are trained to reconstruct their ground truth (they are matched to it, by construction,
not by the Hungarian matcher); negatives are trained as background. Padding queries (class
`num_classes`, an all-zero embedding; box 0) are neither.

The D denoising queries go before the Q matching queries. In self-attention (True = may not
attend) the matching queries cannot see any denoising query, and the groups cannot see each
other; denoising queries may see the matching queries (official lines 90-109).

Differences: the noise is drawn from a `torch.Generator` on the CPU (seeded per batch by the
adapter, `Batch.noise_seeds`) and moved to the model's device, so a run is reproducible and the
same on every device; `box_noise` is used as given (the official decoder passes 1.0 whatever
its config says, dfine_decoder.py line 854; the configs say 1.0 as well).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import box_convert

from kdbench.adapters.detection.matcher import Match


@dataclass
class DenoisingGroup:
    """One batch's denoising queries (D-FINE's dn_meta and the decoder inputs it prepends).

    Attributes:
        labels: (B, D) long, each query's (noised) class; `num_classes` at padding.
        boxes: (B, D, 4) noised cx, cy, w, h in [0, 1] (0 at padding).
        attn_mask: (D + Q, D + Q) bool self-attention mask over [denoising, matching] queries,
            True where a query may not attend.
        positive: per image (n_i·G,) long, the positive queries' indices (official dn_positive_idx).
        groups: G (official dn_num_group); 0 when the batch has no ground truth (then D = 0).
        max_gt: M.
    """

    labels: Tensor
    boxes: Tensor
    attn_mask: Tensor
    positive: list[Tensor]
    groups: int
    max_gt: int

    @property
    def size(self) -> int:
        """D, the number of denoising queries per image."""
        return int(self.labels.shape[1])


def attention_mask(groups: int, max_gt: int, queries: int, device: torch.device | None = None) -> Tensor:
    """(D + Q, D + Q) bool, D = 2·max_gt·groups: True where the row's query may not attend to the
    column's. Matching queries (the last Q) see no denoising query; each group of 2·max_gt
    denoising queries sees itself and the matching queries only (official lines 90-109)."""
    size = 2 * max_gt
    d = size * groups
    mask = torch.zeros(d + queries, d + queries, dtype=torch.bool, device=device)
    mask[d:, :d] = True
    for g in range(groups):
        rows = slice(g * size, (g + 1) * size)
        mask[rows, :g * size] = True
        mask[rows, (g + 1) * size:d] = True
    return mask


def noised_boxes(boxes: Tensor, negative: Tensor, scale: float, generator: torch.Generator | None) -> Tensor:
    """Box noise of CDN (official lines 69-86) on (B, D, 4) cx, cy, w, h.

    Each xyxy edge moves by sign·u·scale·(w/2 for x, h/2 for y), sign ±1 with equal chance,
    u ~ U[0, 1) where `negative` (B, D) is False and U[1, 2) where it is True; the box is clipped
    to [0, 1] and converted back, a width or height that came out negative made positive.
    """
    shape = boxes.shape
    sign = torch.randint(0, 2, shape, generator=generator).to(boxes) * 2.0 - 1.0
    part = torch.rand(shape, generator=generator).to(boxes) + negative[..., None].to(boxes)
    half = (boxes[..., 2:] * 0.5).repeat(1, 1, 2) * scale  # (w/2, h/2, w/2, h/2)
    xyxy = (box_convert(boxes, "cxcywh", "xyxy") + sign * part * half).clamp(0.0, 1.0)
    return box_convert(xyxy, "xyxy", "cxcywh").abs()


def contrastive_denoising_group(
    labels: list[Tensor], boxes: list[Tensor], num_classes: int, queries: int, denoising: int,
    label_noise: float, box_noise: float, generator: torch.Generator | None,
) -> DenoisingGroup:
    """The batch's CDN queries (official `get_contrastive_denoising_training_group`).

    Args:
        labels: per image (n_i,) class indices.
        boxes: per image (n_i, 4) normalised cx, cy, w, h.
        num_classes: C; padding queries get class C.
        queries: Q, the matching queries the mask must also cover.
        denoising: the official num_denoising (> 0), the budget the groups are sized from.
        label_noise: the official label_noise_ratio; a label is redrawn with probability half of it.
        box_noise: the official box_noise_scale (0: boxes unchanged).
        generator: the CPU generator every random draw comes from (None: the global one).

    Returns:
        The group; with no ground truth in the batch, an empty one (D = 0, G = 0), as the
        official dn_meta then splits [0, Q].
    """
    device = boxes[0].device if boxes else torch.device("cpu")
    b = len(labels)
    counts = [len(t) for t in labels]
    max_gt = max(counts, default=0)
    if max_gt == 0:
        empty = torch.empty(0, dtype=torch.long, device=device)
        return DenoisingGroup(torch.empty(b, 0, dtype=torch.long, device=device), torch.empty(b, 0, 4, device=device),
                              attention_mask(0, 0, queries, device), [empty] * b, 0, 0)
    groups = max(1, denoising // max_gt)
    cls = torch.full((b, max_gt), num_classes, dtype=torch.long)
    box = torch.zeros(b, max_gt, 4)
    real = torch.zeros(b, max_gt, dtype=torch.bool)
    for i, n in enumerate(counts):
        cls[i, :n], box[i, :n], real[i, :n] = labels[i].cpu(), boxes[i].detach().float().cpu(), True
    cls, box, real = cls.repeat(1, 2 * groups), box.repeat(1, 2 * groups, 1), real.repeat(1, 2 * groups)
    negative = (torch.arange(2 * max_gt) >= max_gt).repeat(groups)[None].expand(b, -1)  # (B, D)
    positive = [torch.nonzero(real[i] & ~negative[i]).flatten() for i in range(b)]  # per image, n_i·G
    if label_noise > 0:
        flip = torch.rand(cls.shape, generator=generator) < label_noise * 0.5
        drawn = torch.randint(0, num_classes, cls.shape, generator=generator)
        cls = torch.where(flip & real, drawn, cls)
    if box_noise > 0:
        box = noised_boxes(box, negative, box_noise, generator)
    return DenoisingGroup(cls.to(device), box.to(device), attention_mask(groups, max_gt, queries, device),
                          [p.to(device) for p in positive], groups, max_gt)


def cdn_matches(group: DenoisingGroup, labels: list[Tensor]) -> list[Match]:
    """Per image (positive query indices, ground-truth indices): group g's positive j is matched
    to ground truth j (official `get_cdn_matched_indices`: arange(n_i) tiled G times)."""
    out = []
    for positive, gt in zip(group.positive, labels, strict=True):
        idx = torch.arange(len(gt), dtype=torch.long, device=positive.device).repeat(group.groups)
        out.append((positive.long(), idx))
    return out
