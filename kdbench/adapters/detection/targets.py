"""Per-batch detection bookkeeping: ground truth, matches, and the tensors the losses need."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from torchvision.ops import box_convert

from kdbench.adapters.detection.matcher import Match
from kdbench.adapters.detection.model import DetectorOutput
from kdbench.outputs import Outputs


@dataclass
class Batch:
    images: Tensor  # (B, 3, S, S) float in [0, 1]
    labels: list[Tensor]  # per image (n_i,) contiguous class indices
    boxes: list[Tensor]  # per image (n_i, 4) normalised cx, cy, w, h
    ids: Tensor  # (B,) dataset indices
    # (B,) int64 seeds of the denoising noise, one per position in the epoch (adapter.noise_seed); a
    # batch (or a rank's shard of it) draws its denoising queries from a generator seeded with its first
    noise_seeds: Tensor | None = None

    def __post_init__(self) -> None:
        self.all_labels = torch.cat(self.labels) if self.labels else torch.empty(0, dtype=torch.long)
        self.all_boxes = torch.cat(self.boxes) if self.boxes else torch.empty(0, 4)
        self.offsets = [0, *torch.tensor([len(t) for t in self.labels]).cumsum(0).tolist()][:-1]

    @property
    def num_boxes(self) -> float:
        return float(max(len(self.all_labels), 1))


@dataclass
class Pairs:
    """Matched (image, query, ground truth) triples of a batch, flat: gather with one index op."""

    batch: Tensor  # (K,) image index
    query: Tensor  # (K,) query index
    gt: Tensor  # (K,) index into the batch's concatenated ground truth

    @staticmethod
    def of(matches: list[Match], batch: Batch) -> Pairs:
        device = batch.all_labels.device
        if not matches:
            empty = torch.empty(0, dtype=torch.long, device=device)
            return Pairs(empty, empty, empty)
        b = torch.cat([torch.full_like(r, i) for i, (r, _) in enumerate(matches)])
        q = torch.cat([r for r, _ in matches])
        g = torch.cat([c + off for (_, c), off in zip(matches, batch.offsets, strict=True)])
        return Pairs(b.to(device), q.to(device), g.to(device))

    def __len__(self) -> int:
        return int(self.batch.numel())


@dataclass
class DetectionOutputs(Outputs):
    """Outputs plus what the detection task loss and alignment need (methods ignore these)."""

    raw: DetectorOutput | None = None
    batch: Batch | None = None
    matches: list[list[Match]] = field(default_factory=list)  # per decoder layer
    pre_matches: list[Match] = field(default_factory=list)
    union: list[Match] = field(default_factory=list)  # GO-LSD's union of the layers' matches (its request only)
    pairs: list[Pairs] = field(default_factory=list)  # flat forms of `matches`
    pre_pairs: Pairs | None = None
    enc_pairs: Pairs | None = None  # the encoder proposals' own matches (query selection only)
    union_pairs: Pairs | None = None  # flat `union`; None without the request
    dn_pairs: Pairs | None = None  # the denoising queries' positives and their ground truth (raw.dn)


def matched_iou(pred_cxcywh: Tensor, gt_cxcywh: Tensor) -> Tensor:
    """(K,) IoU of paired boxes (the diagonal of torchvision's box_iou, without the K×K matrix)."""
    a, b = box_convert(pred_cxcywh, "cxcywh", "xyxy"), box_convert(gt_cxcywh, "cxcywh", "xyxy")
    lt = torch.maximum(a[:, :2], b[:, :2])
    rb = torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = (a[:, 2:] - a[:, :2]).prod(-1) + (b[:, 2:] - b[:, :2]).prod(-1) - inter
    return inter / union.clamp_min(1e-12)


def query_mask(pairs: Pairs, shape: tuple[int, int], device: torch.device) -> Tensor:
    """(B, Q) bool, True at matched queries."""
    mask = torch.zeros(shape, dtype=torch.bool, device=device)
    mask[pairs.batch, pairs.query] = True
    return mask


def query_labels(pairs: Pairs, batch: Batch, shape: tuple[int, int], device: torch.device) -> Tensor:
    """(B, Q) long: the matched ground truth's class, 0 at unmatched queries (masked anyway)."""
    out = torch.zeros(shape, dtype=torch.long, device=device)
    out[pairs.batch, pairs.query] = batch.all_labels[pairs.gt]
    return out
