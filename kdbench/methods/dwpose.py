"""DWPose (Yang, Zeng, Yuan, Li, "Effective Whole-body Pose Estimation with Two-stages
Distillation", ICCV 2023 Workshops; official code IDEA-Research/DWPose)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from kdbench.losses.pose import dwpose_feature, dwpose_logit
from kdbench.methods import register
from kdbench.methods.base import Method, MethodContext, RunState, Stage
from kdbench.outputs import Outputs


def decay(epoch: int, epochs: int) -> float:
    """DWPose's weight decay of the distillation terms, r(e) = 1 − e/E_max (e 0-based)."""
    return 1.0 - epoch / epochs


@register
class DWPose(Method):
    """DWPose: feature + logit KD with a decaying weight, then head self-KD on frozen features.

    Stage 1 (student from scratch, external teacher): L = L_gt + r(e)·(L_fea + L_logit),
    r(e) = 1 − e/E_max; L_fea = α·‖Conv1×1(F_S) − F_T‖²_sum / B on the last backbone stage (the
    1×1 align convolution only when the channel counts differ, as the official `FeaLoss`);
    L_logit = w·(1/K)·Σ_axis (1/B)Σ_b Σ_k KL(σ(β·z_T) ‖ σ(β·z_S)) over every keypoint,
    visibility ignored, no T².
    Stage 2 (`later_stages`, `stage2_fraction` of the stage-1 epochs, 60/270 ≈ 20% officially):
    the stage-1 model, frozen, teaches a fresh head on its own frozen backbone, with L_logit at
    weight `head_weight` (1) only — no ground-truth loss, no decay — at a constant learning rate
    (see `later_stages`); the exported model is the stage-1 backbone with that head.

    Stage 2 clips the gradient norm at `stage2_grad_clip` (1), as the official stage-2 configs
    (`optim_wrapper = dict(clip_grad=dict(max_norm=1., norm_type=2))`); 0 leaves the card's.

    Reductions, checked against open-mmlab/mmpose at 1c314be (`mmpose/models/losses/
    logit_dis_loss.py` `KDLoss.forward`/`KDLoss.loss`, `fea_dis_loss.py`
    `FeaLoss.get_dis_loss`, `models/distillers/dwpose_distiller.py` `DWPoseDistiller.loss`,
    `classification_loss.py` `KLDiscretLoss.forward`): KDLoss sums the KL over bins and
    keypoints, averages over the batch and divides by K (after adding the two axes); RTMPose's
    ground-truth KLDiscretLoss averages over bins, sums over batch and keypoints and divides by
    K; FeaLoss is α_fea·MSE_sum/N. kdbench's `dwpose_logit`, `simcc_kl` and `dwpose_feature`
    are the same reductions, so the logit term's weight relative to the ground-truth loss is
    w·W/B there and here alike (W bins, B per-GPU batch): the official weights 0.1 / 1 / 7e-5
    carry their official meaning only at the official W and B (e.g. W 384/512, B 64: 0.6/0.8),
    and a card with fewer bins or a smaller batch weighs the logit term less, as the official
    code would at that W and B.

    β: the official code applies the head loss's β (RTMPose: 10) to raw logits; kdbench's pose
    heads already are β·z, so `beta` (applied on top) is 1. `feature`: which of Outputs.features
    is distilled; empty means the last one (adapters list backbone stages earliest first).
    """

    name = "dwpose"
    tune_grid: ClassVar[dict[str, tuple[float, ...]]] = {"stage2_fraction": (0.2, 0.3, 0.4, 0.5)}
    paper = "Yang et al., Effective Whole-body Pose Estimation with Two-stages Distillation, ICCVW 2023"
    teacher = "external"
    needs = frozenset({"features", "head_stage"})
    accepts = frozenset({"binned"})  # SimCC

    @dataclass
    class Config:
        alpha_fea: float = 7e-5
        logit_weight: float = 0.1
        head_weight: float = 1.0
        beta: float = 1.0
        stage2_fraction: float = 0.2
        stage2_grad_clip: float = 1.0
        feature: str = ""

    def __init__(self, config: Config, ctx: MethodContext) -> None:
        super().__init__(config, ctx)
        assert ctx.teacher is not None
        self.feature = config.feature or list(ctx.student.features)[-1]
        for outputs, who in ((ctx.student, "student"), (ctx.teacher, "teacher")):
            if self.feature not in outputs.features:
                raise ValueError(f"dwpose: the {who} has no feature {self.feature!r}; "
                                 f"it has {', '.join(outputs.features)}")
        c_s = ctx.student.features[self.feature].shape[1]
        c_t = ctx.teacher.features[self.feature].shape[1]
        self.align = nn.Conv2d(c_s, c_t, 1) if c_s != c_t else nn.Identity()

    def later_stages(self) -> tuple[Stage, ...]:
        # The official stage-2 configs inherit RTMPose's schedule, whose cosine phase begins at
        # epoch 135 of 270, past their 60 epochs: after a 1,000-iteration warm-up, stage 2 runs
        # at the constant base learning rate. Here: constant, without the warm-up. The official
        # stage-2 configs also clip the gradient norm at 1 (optim_wrapper clip_grad max_norm 1).
        train: dict[str, object] = {"schedule": {"name": "constant", "warmup_epochs": 0}}
        if self.config.stage2_grad_clip > 0:
            train["grad_clip"] = self.config.stage2_grad_clip
        return (Stage(self.config.stage2_fraction, train),)

    def task_weight(self, term: str, progress: float) -> float:
        return 0.0 if self.stage > 0 else 1.0

    def loss(
        self, student: Outputs, teacher: Outputs | None, progress: float, state: RunState
    ) -> dict[str, Tensor]:
        assert teacher is not None
        c = self.config
        weight = c.head_weight if self.stage > 0 else c.logit_weight * decay(state.epoch, state.epochs)
        # the official code sums the axes' (1/B)·Σ_b Σ_k KL and divides by K once; every axis
        # has the same K, so dividing each axis by K (as dwpose_logit does) is the same
        logit = [dwpose_logit(s.logits, t.logits, c.beta) for _, s, t in self.paired(student, teacher)]
        terms = {"dwpose/logit": weight * sum(logit[1:], start=logit[0])}
        if self.stage == 0:
            fs, ft = student.features[self.feature], teacher.features[self.feature]
            terms["dwpose/feature"] = decay(state.epoch, state.epochs) * dwpose_feature(
                self.align(fs), ft, c.alpha_fea)
        return terms
