"""kdbench methods inside mmpose training: `kdbench.PoseDistiller`, and DWPose's two stages.

Supports top-down estimators with a SimCC head (RTMPose's `RTMCCHead`: `head(feats)` returns
(x, y) bin logits, `head.loss_module` is `KLDiscretLoss`). Their predictions become Outputs:

- heads["simcc_x"], heads["simcc_y"]: (B, K, W) logits β·z, where β is the head loss's `beta`
  (RTMPose: 10), so that softmax(logits) is the distribution the task loss fits (kdbench's own
  pose adapter exposes β·z the same way); target: the soft labels as the loss sees them
  (softmax(label_beta·label) under `label_softmax`); weight: mmpose's keypoint weights.
- features: "backbone<i>" for each backbone output, earliest first (RTMPose: the last stage).

The student's own `loss_kpt` is kept and re-weighted by the method's `task_weight("simcc_x")`.

DWPose (`distill_loss=dict(type="kdbench.DWPOSELoss")`) runs as two trainings:
stage 1 (`stage=1`): student from scratch, the external teacher frozen, L_gt + r(e)·(L_fea +
L_logit), r(e) = 1 − e/E_max from mmengine's epoch counter; stage 2 (`stage=2`): the teacher is
the stage-1 model (`teacher_ckpt` = the stage-1 checkpoint; its `student.` weights are taken),
the student is the same architecture with the teacher's backbone (and neck) copied in and frozen
in eval mode and a fresh head, trained with the head logit loss only. The stage-2 student is the
exported model: stage-1 backbone + stage-2 head.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from mmpose.registry import MODELS as MMPOSE_MODELS
from torch import Tensor

from kdbench.errors import UsageError
from kdbench.integrations.distill import Distiller
from kdbench.integrations.registry import MODELS
from kdbench.outputs import Head, Outputs


@MODELS.register_module()
class PoseDistiller(Distiller):
    """A kdbench method on an mmpose top-down SimCC estimator (see the module docstring).

    Args:
        stage: which training stage this run is: 1, or 2 .. 1 + len(method.later_stages()) for
            methods with later stages (DWPose's head-only second stage).
        **kwargs: `Distiller`'s.
    """

    task = "pose"
    provides = frozenset({"features", "head_stage"})
    task_terms: ClassVar[dict[str, str]] = {"loss_kpt": "simcc_x"}

    def __init__(self, *args: Any, stage: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        method = self.distill_loss._bound()
        stages = 1 + len(method.later_stages())
        if not 1 <= stage <= stages:
            raise UsageError(f"method {self.distill_loss.name!r} has {stages} stage(s); got stage={stage}")
        self.stage = stage
        method.stage = stage - 1
        if stage > 1:
            self._check_head_stage()
            self.student.backbone.requires_grad_(False)
            if self.student.with_neck:
                self.student.neck.requires_grad_(False)

    def _check_head_stage(self) -> None:
        assert self.teacher is not None
        for part in ("backbone", "neck"):
            s, t = getattr(self.student, part, None), getattr(self.teacher, part, None)
            if (s is None) != (t is None) or (s is not None and t is not None
                                              and s.state_dict().keys() != t.state_dict().keys()):
                raise UsageError(f"stage {self.stage} trains a fresh head on the teacher's {part}: student and "
                                 f"teacher configs must have the same {part}")

    def build_model(self, cfg: dict[str, Any]) -> Any:
        model = MMPOSE_MODELS.build(cfg)
        head = getattr(model, "head", None)
        if head is None or not hasattr(head, "loss_module") or not hasattr(head.loss_module, "beta") \
                or not hasattr(head, "simcc_split_ratio"):
            raise UsageError(f"kdbench.PoseDistiller supports top-down estimators with a SimCC head and "
                             f"KLDiscretLoss (RTMPose's RTMCCHead); got {cfg.get('type')} with {type(head).__name__}")
        return model

    def init_weights(self) -> None:
        super().init_weights()
        if self.stage > 1 and self.teacher is not None:
            self.student.backbone.load_state_dict(self.teacher.backbone.state_dict())
            if self.student.with_neck:
                self.student.neck.load_state_dict(self.teacher.neck.state_dict())

    def train(self, mode: bool = True) -> PoseDistiller:
        super().train(mode)
        if getattr(self, "stage", 1) > 1:
            self.student.backbone.eval()  # frozen stage-1 features, BatchNorm statistics included
            if self.student.with_neck:
                self.student.neck.eval()
        return self

    def outputs(self, model: Any, inputs: Tensor, samples: list[Any] | None) -> tuple[Outputs, Any]:
        backbone = model.backbone(inputs)
        feats = model.neck(backbone) if model.with_neck else backbone
        pred_x, pred_y = model.head(feats)  # (B, K, Wx), (B, K, Wy)
        loss = model.head.loss_module
        heads = {}
        gt = None
        if samples is not None:
            labels = [d.gt_instance_labels for d in samples]
            gt_x = torch.cat([g.keypoint_x_labels for g in labels])
            gt_y = torch.cat([g.keypoint_y_labels for g in labels])
            weight = torch.cat([g.keypoint_weights for g in labels]).to(pred_x.dtype)
            gt = (gt_x, gt_y, weight)
        for name, pred, i in (("simcc_x", pred_x, 0), ("simcc_y", pred_y, 1)):
            target = weight_ = None
            if gt is not None:
                label = gt[i].to(pred.dtype)
                target = (F.softmax(label * loss.label_beta, dim=-1) if loss.label_softmax
                          else label / label.sum(-1, keepdim=True).clamp_min(1e-12))
                weight_ = gt[2]
            heads[name] = Head(loss.beta * pred, target=target, weight=weight_, kind="binned")  # SimCC bins
        features = {f"backbone{i}": f for i, f in enumerate(backbone)}
        return Outputs(heads=heads, features=features), (pred_x, pred_y, gt)

    def task_losses(self, raw: Any, samples: list[Any]) -> dict[str, Any]:
        pred_x, pred_y, (gt_x, gt_y, weight) = raw
        return {"loss_kpt": self.student.head.loss_module((pred_x, pred_y), (gt_x, gt_y), weight)}

    def record_info(self) -> dict[str, Any]:
        info = super().record_info()
        info["method"]["hparams"] = {**info["method"]["hparams"], "stage": self.stage}
        return info
