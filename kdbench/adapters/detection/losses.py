"""D-FINE's set-prediction criterion over decoder layers (VFL, L1, GIoU, FGL)."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_convert

from kdbench.adapters.detection.fdr import bbox2distance
from kdbench.adapters.detection.model import DetectorOutput
from kdbench.adapters.detection.targets import Batch, Pairs, matched_iou
from kdbench.losses import box_giou, box_l1, fgl, varifocal


class DetectionLoss:
    """Per layer: w_vfl·VFL (the layer's own matches) + w_l1·L1 + w_giou·GIoU + w_fgl·FGL (its own
    matches, or GO-LSD's union when given). The pre-box head gets VFL, L1 and GIoU, and so do the
    encoder proposals when the queries are selected from them (VFL on their own matches, L1 and
    GIoU on their own or the union: Peterande/D-FINE 4a1f73a, src/zoo/dfine/dfine_criterion.py,
    the `enc_aux_outputs` loop, where "boxes" takes `indices_go`; FGL needs corners, which the
    proposals have not).

    Terms: the final layer's VFL is "cls" (the hard-label term of head "cls"), its box terms
    "l1", "giou", "fgl"; earlier layers, the pre-box head and the encoder proposals are summed
    into "aux/<term>".
    As in D-FINE, losses are divided by the number of ground-truth boxes in the batch; box
    losses by the number of union pairs when the union is used.

    Denoising queries (`dn`, their constructed matches, with `raw.dn`): every layer's VFL, L1,
    GIoU and FGL and the pre-box head's VFL, L1 and GIoU on those matches, all divided by the
    number of ground-truth boxes × the number of groups, summed into "dn/<term>"
    (Peterande/D-FINE 4a1f73a, src/zoo/dfine/dfine_criterion.py lines 401-434: `dn_outputs`
    through the criterion's losses with `indices_dn` and `dn_num_boxes`, FGL's targets from the
    denoising queries' own initial boxes, lines 151-158; `dn_pre_outputs` have no corners, so no
    FGL). Negatives and padding queries are background in VFL, as every unmatched query.
    """

    def __init__(self, vfl: float = 1.0, l1: float = 5.0, giou: float = 2.0, fgl: float = 0.15,
                 alpha: float = 0.75, gamma: float = 2.0) -> None:
        self.w = {"vfl": vfl, "l1": l1, "giou": giou, "fgl": fgl}
        self.alpha, self.gamma = alpha, gamma

    def __call__(self, raw: DetectorOutput, batch: Batch, pairs: list[Pairs], pre: Pairs,
                 union: Pairs | None, enc: Pairs | None = None, dn: Pairs | None = None) -> dict[str, Tensor]:
        n_gt = batch.num_boxes
        n_box = float(max(len(union), 1)) if union is not None else n_gt
        terms: dict[str, Tensor] = {}

        def add(name: str, key: str, value: Tensor) -> None:
            terms[name] = terms[name] + self.w[key] * value if name in terms else self.w[key] * value

        layers = len(pairs)
        for i in range(layers):
            box_pairs = union if union is not None else pairs[i]
            parts = {"vfl": self._vfl(raw.logits[i], raw.boxes[i], pairs[i], batch, n_gt)}
            parts |= self._boxes(raw.boxes[i], box_pairs, batch, n_box)
            parts["fgl"] = self._fgl(raw, i, box_pairs, batch, n_box)
            for key, value in parts.items():
                final_name = "cls" if key == "vfl" else key
                add(final_name if i == layers - 1 else f"aux/{key}", key, value)
        add("aux/vfl", "vfl", self._vfl(raw.logits[0], raw.pre_boxes, pre, batch, n_gt))
        for key, value in self._boxes(raw.pre_boxes, union if union is not None else pre, batch, n_box).items():
            add(f"aux/{key}", key, value)
        if enc is not None:
            assert raw.enc_logits is not None and raw.enc_boxes is not None
            add("aux/vfl", "vfl", self._vfl(raw.enc_logits, raw.enc_boxes, enc, batch, n_gt))
            for key, value in self._boxes(raw.enc_boxes, union if union is not None else enc, batch, n_box).items():
                add(f"aux/{key}", key, value)
        if dn is not None and raw.dn is not None and raw.dn_group is not None:
            terms |= self._denoising(raw.dn, dn, batch, n_gt * raw.dn_group.groups or 1.0)
        return terms

    def _denoising(self, raw: DetectorOutput, pairs: Pairs, batch: Batch, n: float) -> dict[str, Tensor]:
        """"dn/<term>": every layer's and the pre-box head's losses on the denoising matches."""
        terms: dict[str, Tensor] = {}
        parts = []
        for i in range(raw.logits.shape[0]):
            parts.append({"vfl": self._vfl(raw.logits[i], raw.boxes[i], pairs, batch, n),
                          **self._boxes(raw.boxes[i], pairs, batch, n), "fgl": self._fgl(raw, i, pairs, batch, n)})
        parts.append({"vfl": self._vfl(raw.logits[0], raw.pre_boxes, pairs, batch, n),
                      **self._boxes(raw.pre_boxes, pairs, batch, n)})
        for part in parts:
            for key, value in part.items():
                name = f"dn/{key}"
                terms[name] = terms[name] + self.w[key] * value if name in terms else self.w[key] * value
        return terms

    def _vfl(self, logits: Tensor, boxes: Tensor, pairs: Pairs, batch: Batch, n: float) -> Tensor:
        target = torch.zeros_like(logits)
        positive = torch.zeros_like(logits, dtype=torch.bool)
        if len(pairs):
            labels = batch.all_labels[pairs.gt]
            iou = matched_iou(boxes[pairs.batch, pairs.query].detach(), batch.all_boxes[pairs.gt])
            target[pairs.batch, pairs.query, labels] = iou.to(target.dtype)
            positive[pairs.batch, pairs.query, labels] = True
        return varifocal(logits, target, self.alpha, self.gamma, n, positive=positive)

    def _boxes(self, boxes: Tensor, pairs: Pairs, batch: Batch, n: float) -> dict[str, Tensor]:
        pred, gt = boxes[pairs.batch, pairs.query], batch.all_boxes[pairs.gt]
        return {"l1": box_l1(pred, gt, n), "giou": box_giou(pred, gt, n)}

    def _fgl(self, raw: DetectorOutput, i: int, pairs: Pairs, batch: Batch, n: float) -> Tensor:
        corners = raw.corners[i][pairs.batch, pairs.query]  # (K, 4, N+1)
        gt = batch.all_boxes[pairs.gt]
        init = raw.pre_boxes.detach()[pairs.batch, pairs.query]
        left, w_left, w_right = bbox2distance(init, box_convert(gt, "cxcywh", "xyxy"), corners.shape[-1] - 1,
                                              raw.reg_scale, raw.up)
        iou = matched_iou(raw.boxes[i][pairs.batch, pairs.query].detach(), gt)
        return fgl(corners, left, w_left, w_right, iou, n)
