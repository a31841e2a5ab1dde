"""kdbench methods inside mmdetection training: `kdbench.DetDistiller`.

Supports single-stage anchor-based detectors (`AnchorHead` subclasses that keep its
`get_targets`, e.g. RetinaNet's `RetinaHead`). Their predictions become kdbench Outputs:

- heads["cls"]: (B, N, C') class logits of all N anchors of all levels, flattened in mmdet's
  own order (level, y, x, anchor); target: the label mmdet's assigner gives each anchor; mask:
  the anchors it assigns to an object. Student and teacher share anchors and ground truth, so
  their assignment and positions coincide: the teacher is aligned as is, and a logit method
  (`kd`, `dkd`, `nkd`, ...) distils the class distribution (softmax over C', as kdbench's own
  detection adapter does for its sigmoid class logits) at the assigned anchors, mean over them.
- features: "backbone" (the backbone's last output) and "neck<i>" (FPN level i).

The student's own loss (`bbox_head.loss_by_feat`: focal + box regression) is kept, its
`loss_cls` re-weighted by the method's `task_weight("cls")` (KD's `ce_weight`).

    custom_imports = dict(imports=["kdbench.integrations.mmdet"], allow_failed_imports=False)
    model = dict(type="kdbench.DetDistiller", student=retinanet_s, teacher=retinanet_t,
                 teacher_ckpt="teacher.pth", distill_loss=dict(type="kdbench.KDLoss", ce_weight=1.0))
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from mmdet.models.dense_heads import AnchorHead
from mmdet.models.utils import unpack_gt_instances
from mmdet.registry import MODELS as MMDET_MODELS
from torch import Tensor

from kdbench.errors import UsageError
from kdbench.integrations.distill import Distiller
from kdbench.integrations.registry import MODELS
from kdbench.outputs import Head, HeadKind, Outputs


def _flatten(levels: list[Tensor], channels: int) -> Tensor:
    """Per-level (B, A·C, H, W) maps → (B, N, C), in mmdet's anchor order."""
    return torch.cat([x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, channels) for x in levels], dim=1)


@MODELS.register_module()
class DetDistiller(Distiller):
    """A kdbench method on an mmdet single-stage anchor-based detector (see the module docstring)."""

    task = "detection"
    provides = frozenset({"features"})
    task_terms: ClassVar[dict[str, str]] = {"loss_cls": "cls"}

    def build_model(self, cfg: dict[str, Any]) -> Any:
        model = MMDET_MODELS.build(cfg)
        head = getattr(model, "bbox_head", None)
        if not isinstance(head, AnchorHead) or getattr(model, "with_neck", None) is None:
            raise UsageError(f"kdbench.DetDistiller supports single-stage anchor-based detectors "
                             f"(an AnchorHead subclass such as RetinaHead); got {cfg.get('type')} with "
                             f"{type(head).__name__}")
        return model

    def outputs(self, model: Any, inputs: Tensor, samples: list[Any] | None) -> tuple[Outputs, Any]:
        backbone = model.backbone(inputs)
        feats = model.neck(backbone) if model.with_neck else backbone
        cls_scores, bbox_preds = model.bbox_head(feats)
        head: AnchorHead = model.bbox_head
        logits = _flatten(cls_scores, head.cls_out_channels)  # (B, N, C')
        target = mask = None
        if samples is not None:
            labels = self._anchor_labels(head, cls_scores, samples)  # (B, N), num_classes = background
            mask = labels < head.num_classes
            target = torch.where(mask, labels, torch.zeros_like(labels))
        features = {"backbone": backbone[-1], **{f"neck{i}": f for i, f in enumerate(feats)}}
        # RetinaNet-style heads score each class with its own sigmoid (focal loss): binary, not a softmax
        kind: HeadKind = "binary" if head.use_sigmoid_cls else "categorical"
        outputs = Outputs(heads={"cls": Head(logits, target=target, mask=mask, kind=kind)}, features=features)
        return outputs, (cls_scores, bbox_preds)

    @staticmethod
    @torch.no_grad()
    def _anchor_labels(head: AnchorHead, cls_scores: list[Tensor], samples: list[Any]) -> Tensor:
        gt, gt_ignore, metas = unpack_gt_instances(samples)
        sizes = [c.shape[-2:] for c in cls_scores]
        anchors, valid = head.get_anchors(sizes, metas, device=cls_scores[0].device)
        labels_per_level = head.get_targets(anchors, valid, gt, metas, batch_gt_instances_ignore=gt_ignore)[0]
        return torch.cat(labels_per_level, dim=1)

    def task_losses(self, raw: Any, samples: list[Any]) -> dict[str, Any]:
        gt, gt_ignore, metas = unpack_gt_instances(samples)
        cls_scores, bbox_preds = raw
        return self.student.bbox_head.loss_by_feat(cls_scores, bbox_preds, gt, metas,  # type: ignore[no-any-return]
                                                   batch_gt_instances_ignore=gt_ignore)
