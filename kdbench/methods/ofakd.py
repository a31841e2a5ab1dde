"""OFA-KD, one-for-all knowledge distillation (Hao, Guo, Han, Tang, Hu, Wang, Xu, "One-for-All:
Bridge the Gap Between Heterogeneous Architectures in Knowledge Distillation", NeurIPS 2023)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar, cast

import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.losses import ofa
from kdbench.methods import register
from kdbench.methods.base import Method, MethodContext, RunState, require_target
from kdbench.outputs import Outputs

BRANCHES = ("auto", "cnn", "vit")
#: The official ViT branch's MLP width ratio (timm 0.6.5 `Block`'s default `mlp_ratio`).
MLP_RATIO = 4


@register
class OFAKD(Method):
    """OFA-KD: the ε-enhanced OFA loss towards the teacher's final logits, on the student's final
    head and on a logit branch from each student stage.

        L = ce_weight·L_task + kd_weight·ofa(z_S, z_T, y) + ofa_weight·Σ_i ofa(b_i(f_i), z_T, y)

    with `ofa` the loss of `kdbench.losses.ofa` (ε = `eps`, T = `temperature`), f_i the student's
    feature "stage<i>" and b_i a trainable branch that projects it into the logit space (removed
    at inference). Every branch and the final head are taught by the teacher's final logits; the
    teacher's features are never read, so the teacher may be of any architecture (the paper's
    point). As the official code (Hao840/OFAKD at f7bb896, distillers/ofa.py, `OFA`, lines
    21-144; train.py, lines 81-92, for the defaults), read for kdbench:

    - weights: `ce_weight` = `--gt-loss-weight` 1, `kd_weight` = `--kd-loss-weight` 1 on the final
      logits, `ofa_weight` = `--ofa-loss-weight` 1 on the sum over branches; `temperature` =
      `--ofa-temperature` 1; `eps` = `--ofa-eps` [1] (the README's CIFAR-100 command uses 1.0, its
      ImageNet ResNet-18/DeiT-T command 1.5). The official code takes one ε per branch plus one
      for the final logits and broadcasts a single value to all; kdbench takes the single value.
    - stages: `--ofa-stage` 1 2 3 4, every stage of the official four-stage models; here
      `stages` "" means every "stage<i>" feature the student exposes (classification: three
      maps; OOD: one pooled vector per encoder block), or a comma-separated subset. Stage i of
      the student's N is sized as the official stage i of 4.
    - CNN branch, for (B, C, *spatial) maps (1-D or 2-D): N − i `SepConv` blocks (depthwise 3 at
      stride 2 → pointwise → BN → ReLU → depthwise 3 → pointwise → BN → ReLU, channels doubling,
      the last to d = max(d_S, d_T), the embedding widths of student and teacher), or for the
      last stage a 1×1 conv to d; then global average pooling → Linear(d, K).
    - ViT branch, for pooled (B, D) vectors (one token) and, with `branch` "vit", for a map's
      positions as tokens (B, N, C): max(N − i, 1) pre-LN Transformer blocks of width d_S with
      `heads` heads (official: timm's `Block` at 4 heads, MLP ratio 4, no qkv bias), the mean
      over tokens, Linear(d_S, K). The official `PatchMerging` steps (LayerNorm → bias-free
      Linear to d_S → GELU over each 2×2 group of patches, until the grid is 7×7: one step for
      a 14×14 ViT) are applied here per token, without grouping (the token counts are small, one
      for pooled vectors), as one step where C ≠ d_S and none otherwise. There is no class
      token, so the tokens are averaged (the official `GAP1d`).
    - `branch` "auto" picks CNN for maps and ViT for pooled vectors (the OOD encoder pools each
      block over its tokens before returning it, so its branches see one token: attention over
      one token reduces each block to a residual MLP); "vit" treats a map's positions as tokens
      (a Transformer student of the classification zoo); "cnn" on vectors is refused.
    - initialisation as the official `init_weights`: convs Kaiming-normal (fan_out, ReLU), BN
      weight 1 and bias 0, Linears truncated normal (std 0.02) with bias 0.
    - the target y is the hard label (the official one-hot of the argmax under label
      smoothing); the card's task loss stays as it is (the official configs add label smoothing
      0.1, a training setting kdbench leaves to the card).

    Tasks: it needs intermediate features and one categorical prediction per sample
    (`sample_heads`), classification and OOD. Detection is refused: its heads are per query
    (binary class scores, binned box edges), and a branch from an image's feature map gives one
    logit vector per image, not per query. Pose is refused: its SimCC heads are binned, per
    keypoint and axis. Translation is refused: its heads are per target token and it exposes no
    features.
    """

    name = "ofakd"
    tune_grid: ClassVar[dict[str, tuple[float, ...]]] = {"eps": (1.0, 1.2, 1.5, 2.0)}
    paper = ("Hao et al., One-for-All: Bridge the Gap Between Heterogeneous Architectures in Knowledge "
             "Distillation, NeurIPS 2023")
    teacher = "external"
    needs = frozenset({"features", "sample_heads"})
    accepts = frozenset({"categorical"})

    @dataclass
    class Config:
        eps: float = 1.0
        temperature: float = 1.0
        kd_weight: float = 1.0
        ofa_weight: float = 1.0
        ce_weight: float = 1.0
        stages: str = ""
        branch: str = "auto"
        heads: int = 4

    def __init__(self, config: Config, ctx: MethodContext) -> None:
        super().__init__(config, ctx)
        if config.branch not in BRANCHES:
            raise ValueError(f"ofakd branch {config.branch!r}; valid: {', '.join(BRANCHES)}")
        feats = ctx.student.features
        order = sorted((n for n in feats if re.fullmatch(r"stage\d+", n)), key=lambda n: int(n[5:]))
        if not order or "embedding" not in feats:
            raise ValueError(f"ofakd needs the student's stage<i> features and its embedding; it has "
                             f"{', '.join(sorted(feats)) or 'none'}")
        chosen = [s.strip() for s in config.stages.split(",") if s.strip()] or order
        unknown = [s for s in chosen if s not in order]
        if unknown:
            raise ValueError(f"ofakd stages {', '.join(unknown)} not among the student's {', '.join(order)}")
        self.stage_names = chosen
        d_s = feats["embedding"].shape[-1]
        t_feats = ctx.teacher.features if ctx.teacher is not None else {}
        d_t = t_feats["embedding"].shape[-1] if "embedding" in t_feats else d_s
        self.branches = nn.ModuleDict({
            head: nn.ModuleDict({
                stage: _branch(feats[stage], len(order) - order.index(stage) - 1, d_s, max(d_s, d_t),
                               h.logits.shape[-1], config.branch, config.heads)
                for stage in chosen})
            for head, h in self.own_heads(ctx.student).items()
        })
        self.branches.apply(_init_weights)

    def branch_logits(self, student: Outputs, head: str) -> dict[str, Tensor]:
        """Each chosen stage's branch logits (B, K) for `head`."""
        branches = cast(nn.ModuleDict, self.branches[head])
        return {stage: branches[stage](student.features[stage]) for stage in self.stage_names}

    def loss(
        self, student: Outputs, teacher: Outputs | None, progress: float, state: RunState
    ) -> dict[str, Tensor]:
        c = self.config
        terms = {}
        for name, s, t in self.paired(student, teacher):
            y = require_target(s, self.name)
            terms[f"ofakd/{name}"] = c.kd_weight * ofa(s.logits, t.logits, y, c.eps, c.temperature, s.mask)
            branches = [ofa(z, t.logits, y, c.eps, c.temperature, s.mask)
                        for z in self.branch_logits(student, name).values()]
            terms[f"ofakd_branch/{name}"] = c.ofa_weight * sum(branches, start=s.logits.new_zeros(()))
        return terms


def _branch(feature: Tensor, after: int, d_s: int, d: int, classes: int, kind: str, heads: int) -> nn.Module:
    """The branch of a stage with `after` stages after it, for `feature` (B, C, *spatial) or (B, D)."""
    if kind == "auto":
        kind = "cnn" if feature.dim() > 2 else "vit"
    if kind == "cnn":
        if feature.dim() not in (3, 4):
            raise ValueError(f"ofakd branch 'cnn' needs (B, C, L) or (B, C, H, W) maps, got a feature of "
                             f"shape {tuple(feature.shape)}; use branch 'vit' or 'auto'")
        return _cnn_branch(feature.shape[1], feature.dim() - 2, after, d, classes)
    if d_s % heads:
        raise ValueError(f"ofakd heads {heads} does not divide the student's embedding width {d_s}")
    c_in = feature.shape[-1] if feature.dim() == 2 else feature.shape[1]
    return _vit_branch(c_in, max(after, 1), d_s, heads, classes)


def _cnn_branch(c_in: int, nd: int, downsamples: int, width: int, classes: int) -> nn.Sequential:
    conv = nn.Conv1d if nd == 1 else nn.Conv2d
    pool = nn.AdaptiveAvgPool1d(1) if nd == 1 else nn.AdaptiveAvgPool2d(1)
    blocks: list[nn.Module] = []
    for i in range(downsamples):
        blocks.append(SepConv(c_in, width if i == downsamples - 1 else 2 * c_in, nd))
        c_in *= 2
    if not downsamples:
        blocks.append(conv(c_in, width, 1))
    return nn.Sequential(*blocks, pool, nn.Flatten(), nn.Linear(width, classes))


def _vit_branch(c_in: int, depth: int, width: int, heads: int, classes: int) -> nn.Sequential:
    merge: nn.Module = nn.Identity() if c_in == width else nn.Sequential(
        nn.LayerNorm(c_in), nn.Linear(c_in, width, bias=False), nn.GELU())
    return nn.Sequential(Tokens(), merge, *(Block(width, heads) for _ in range(depth)), TokenMean(),
                         nn.Linear(width, classes))


class SepConv(nn.Module):
    """The official `SepConv` (distillers/utils.py), 1-D or 2-D: halves each spatial size."""

    def __init__(self, c_in: int, c_out: int, nd: int) -> None:
        super().__init__()
        conv = nn.Conv1d if nd == 1 else nn.Conv2d
        norm = nn.BatchNorm1d if nd == 1 else nn.BatchNorm2d
        self.op = nn.Sequential(
            conv(c_in, c_in, 3, stride=2, padding=1, groups=c_in, bias=False),
            conv(c_in, c_in, 1, bias=False), norm(c_in), nn.ReLU(),
            conv(c_in, c_in, 3, stride=1, padding=1, groups=c_in, bias=False),
            conv(c_in, c_out, 1, bias=False), norm(c_out), nn.ReLU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)  # type: ignore[no-any-return]


class Tokens(nn.Module):
    """(B, D) → (B, 1, D); (B, C, *spatial) → (B, N, C), one token per position."""

    def forward(self, x: Tensor) -> Tensor:
        return x.unsqueeze(1) if x.dim() == 2 else x.flatten(2).transpose(1, 2)


class TokenMean(nn.Module):
    """(B, N, D) → (B, D), the official `GAP1d`."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(1)


class Block(nn.Module):
    """Pre-LN Transformer block as timm 0.6.5's `Block` at its defaults: multi-head self-attention
    with a bias-free qkv, an MLP of ratio 4 with GELU, no dropout."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, MLP_RATIO * dim), nn.GELU(), nn.Linear(MLP_RATIO * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))  # type: ignore[no-any-return]


def _init_weights(m: nn.Module) -> None:
    """The official `init_weights` (distillers/utils.py), extended to the 1-D layers."""
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
