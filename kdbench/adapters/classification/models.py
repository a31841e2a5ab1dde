"""Classification students and teachers: a small ConvNet, its 1-D form for signals (MNIST-1D),
a Transformer over patches of the input read as a signal (another architecture family, for
heterogeneous teachers) and the CIFAR ResNets of the KD literature.

Every model returns a `ClassifierOutput`: the final logits, the logits of optional auxiliary
heads (earliest first), those of an optional joint (class × transformation) head (SLA's
label augmentation, `StagedClassifier.add_joint_head`), those of optional experts (MDCS's
multi-expert student, `StagedClassifier.add_experts`) and named features ("stage1".."stage3"
maps and the pooled "embedding").
The ResNets follow the CIFAR ResNets of He et al. (CVPR 2016) as used by CRD (Tian et al.,
ICLR 2020) and mdistiller (`mdistiller/models/cifar/resnet.py`): `resnet8x4` has ≈1.23M and
`resnet32x4` ≈7.43M parameters with 100 classes.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

STAGES = ("stage1", "stage2", "stage3")


@dataclass
class ClassifierOutput:
    """What every classification model's `forward` returns.

    Attributes:
        logits: (B, K) final logits; never depend on the auxiliary heads.
        aux_logits: (B, K) logits of each auxiliary head, earliest stage first; empty if none.
        features: "stage1", "stage2", "stage3" maps (B, C, H, W), or (B, C, L) for the 1-D
            models, after each stage and
            "embedding" (B, D), the pooled vector fed to the final linear layer.
        joint_logits: (B, K·M) logits of the joint head over (class k, transformation m), index
            k·M + m, when the model has one (`StagedClassifier.add_joint_head`) and the call asked
            for them (`joint=True`); else None.
        expert_logits: (B, K) logits of each expert of a model with experts
            (`StagedClassifier.add_experts`), expert 0 first; `logits` is then their mean. Empty
            for a model without experts.
    """

    logits: Tensor
    aux_logits: list[Tensor] = field(default_factory=list)
    features: dict[str, Tensor] = field(default_factory=dict)
    joint_logits: Tensor | None = None
    expert_logits: list[Tensor] = field(default_factory=list)


def _conv_bn_relu(c_in: int, c_out: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def _conv_bn_relu1d(c_in: int, c_out: int, kernel: int = 5) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv1d(c_in, c_out, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm1d(c_out),
        nn.ReLU(inplace=True),
    )


def _init_weights(modules: Sequence[nn.Module]) -> None:
    """Kaiming-normal convs, BN weight 1 and bias 0 (as torchvision's ResNet)."""
    for root in modules:
        for m in root.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv1d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


#: s of the experts' cosine classifiers: the official `ResNet_s` default, used with `use_norm`.
EXPERT_SCALE = 30.0


class CosineClassifier(nn.Module):
    """s · cos(x, w_k) for each class k: the official `NormedLinear` of RIDE and MDCS followed by
    their `out * self.s` (both inputs L2-normalised over the feature dimension). The weight is
    (D, K), initialised uniform in [−1, 1] and each column scaled to unit norm, as there
    (`uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)`)."""

    def __init__(self, in_features: int, num_classes: int, scale: float = EXPERT_SCALE) -> None:
        super().__init__()
        self.scale = scale
        weight = torch.empty(in_features, num_classes).uniform_(-1, 1)
        self.weight = nn.Parameter(weight / weight.norm(dim=0, keepdim=True).clamp_min(1e-12))

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * F.normalize(x, dim=1) @ F.normalize(self.weight, dim=0)


class AuxHead(nn.Module):
    """Auxiliary classifier on an intermediate stage (deep supervision, removed at inference).

    conv3x3 (stride 2; stride 1 when the map is already ≤ 2×2) → BN → ReLU → conv1x1 to
    `out_channels` → BN → ReLU → global average pool → Linear to K.
    """

    def __init__(self, in_channels: int, out_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(in_channels)
        self.proj = _conv_bn_relu(in_channels, out_channels, kernel=1)
        self.fc = nn.Linear(out_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Map a (B, C, H, W) stage output to (B, K) logits."""
        stride = 1 if min(x.shape[-2:]) <= 2 else 2  # the stride is chosen per input size
        x = F.conv2d(x, self.conv.weight, stride=stride, padding=1)
        x = self.proj(F.relu(self.bn(x)))  # (B, C_out, H', W')
        return self.fc(x.mean(dim=(2, 3)))


class AuxHead1d(nn.Module):
    """`AuxHead` for (B, C, L) maps: conv3 (stride 2; 1 when L ≤ 2) → BN → ReLU → conv1 to
    `out_channels` → BN → ReLU → global average pool → Linear to K."""

    def __init__(self, in_channels: int, out_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, in_channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm1d(in_channels)
        self.proj = _conv_bn_relu1d(in_channels, out_channels, kernel=1)
        self.fc = nn.Linear(out_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Map a (B, C, L) stage output to (B, K) logits."""
        stride = 1 if x.shape[-1] <= 2 else 2
        x = F.conv1d(x, self.conv.weight, stride=stride, padding=1)
        x = self.proj(F.relu(self.bn(x)))  # (B, C_out, L')
        return self.fc(x.mean(dim=2))


class StagedClassifier(nn.Module):
    """A stem, three stages, global average pooling and a linear classifier.

    Subclasses build `stem` and `stages`; this class adds the classifier, the optional
    auxiliary heads after stage1 and stage2, weight init and the forward pass. The auxiliary
    heads are created and initialised after the main network, so a given seed yields the same
    main weights with or without them.
    """

    def __init__(
        self,
        stem: nn.Module,
        stages: Sequence[nn.Module],
        widths: Sequence[int],
        num_classes: int,
        aux_heads: bool,
        aux_head: Callable[[int, int, int], nn.Module] = AuxHead,
    ) -> None:
        super().__init__()
        if len(stages) != len(STAGES) or len(widths) != len(STAGES):
            raise ValueError(f"expected {len(STAGES)} stages and widths, got {len(widths)}")
        self.num_classes = num_classes
        self.widths = tuple(widths)
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.fc = nn.Linear(widths[-1], num_classes)
        _init_weights([self.stem, self.stages])
        heads = [aux_head(w, widths[-1], num_classes) for w in widths[:2]] if aux_heads else []
        self.aux_heads = nn.ModuleList(heads)
        _init_weights([self.aux_heads])
        self.joint_fc: nn.Linear | None = None
        self.expert_stages = nn.ModuleList()  # experts 1 .. E−1: their own stages 2 and 3
        self.expert_fcs = nn.ModuleList()  # experts 1 .. E−1: their own classifiers

    def add_experts(self, experts: int, scale: float = EXPERT_SCALE) -> None:
        """Make the model E experts on a shared stem and stage1 (MDCS, Zhao et al., ICCV 2023, after
        RIDE): each expert has its own stage2, stage3 and cosine classifier, as the official
        CIFAR experts share conv1 and layer1 and own layer2, layer3 and a `NormedLinear` whose
        output is multiplied by s = 30 (fistyee/MDCS `model/ldam_drw_resnets/expert_resnet_cifar.py`
        `ResNet_s` at b07f5bd, with the CIFAR-LT configs' `use_norm: true`).

        Expert 0 is the model's own stage2 and stage3; experts 1 .. E−1 are copies of them
        re-initialised independently (every module's `reset_parameters`, then the model's
        Kaiming init of convolutions and BatchNorm). Every expert, expert 0 included, gets a
        `CosineClassifier` in place of a linear one (the model's own `fc` is then unused). All of
        it is created after every other module, so a given seed yields the same other weights
        with or without experts. `logits` become the mean of the E experts' logits, the official
        inference (`final_out = stack(outs).mean`); `expert_logits` lists each expert's. The
        named features and the auxiliary heads stay expert 0's. Not taken over: the official
        `reduce_dimension` (experts' layer2/layer3 at 24/48 channels instead of 32/64); the
        experts keep the card's widths, so the model has more parameters than the single one.
        """
        if experts < 1:
            raise ValueError(f"a model needs at least one expert, got {experts}")
        for _ in range(experts - 1):
            stages = nn.ModuleList(copy.deepcopy(stage) for stage in self.stages[1:])
            for module in stages.modules():
                reset = getattr(module, "reset_parameters", None) or getattr(module, "_reset_parameters", None)
                if module is not stages and callable(reset):
                    reset()
            _init_weights([stages])
            self.expert_stages.append(stages)
        self.expert_fcs = nn.ModuleList(CosineClassifier(self.widths[-1], self.num_classes, scale)
                                        for _ in range(experts))

    @property
    def experts(self) -> int:
        """E, the number of experts (1 for a model without `add_experts`)."""
        return max(1, len(self.expert_fcs))

    def add_joint_head(self, transformations: int) -> None:
        """Add the joint classifier of SLA (Lee et al., ICML 2020): Linear(D, K·M) on the pooled
        embedding beside `fc`, at PyTorch's default initialisation like `fc` (as SLA's second
        `nn.Linear` in `check_model(name, n*m, n)`). Created after every other module, so a given
        seed yields the same other weights with or without it. `logits` never depend on it, and
        `forward` runs it only when asked (`joint=True`), so a plain call (inference, the
        record's FLOPs) costs what the model without it does."""
        self.joint_fc = nn.Linear(self.widths[-1], self.num_classes * transformations)

    def feature_dims(self) -> dict[str, int]:
        """Channels of each stage map and the embedding size, by feature name."""
        dims = dict(zip(STAGES, self.widths, strict=True))
        dims["embedding"] = self.widths[-1]
        return dims

    def forward(self, x: Tensor, joint: bool = False) -> ClassifierOutput:
        """Classify a (B, C_in, H, W) batch, or (B, C_in, L) for the 1-D models; see `ClassifierOutput`.
        `joint`: also run the joint head, where the model has one."""
        features: dict[str, Tensor] = {}
        x = self.stem(x)
        for name, stage in zip(STAGES, self.stages, strict=True):
            x = stage(x)  # (B, C_i, H_i, W_i) or (B, C_i, L_i)
            features[name] = x
        embedding = x.mean(dim=tuple(range(2, x.dim())))  # (B, D) global average pool
        features["embedding"] = embedding
        aux = [head(features[name]) for name, head in zip(STAGES[:2], self.aux_heads, strict=False)]
        joint_logits = self.joint_fc(embedding) if joint and self.joint_fc is not None else None
        experts: list[Tensor] = []
        if len(self.expert_fcs):
            experts = [self.expert_fcs[0](embedding)]
            for stages, fc in zip(self.expert_stages, self.expert_fcs[1:], strict=True):
                y = features[STAGES[0]]
                for stage in stages.children():  # the expert's own stage2, stage3
                    y = stage(y)
                experts.append(fc(y.mean(dim=tuple(range(2, y.dim())))))
            logits = torch.stack(experts).mean(dim=0)  # (B, K): the experts' mean, MDCS's prediction
        else:
            logits = self.fc(embedding)
        return ClassifierOutput(logits=logits, aux_logits=aux, features=features,
                                joint_logits=joint_logits, expert_logits=experts)


class ConvNet(StagedClassifier):
    """A plain CNN: 3 stages of two conv3x3-BN-ReLU, 2×2 max-pool between stages.

    The pool sits at the start of stages 2 and 3, so each stage map is the output of its convs:
    for 8×8 digits the stages run at 8×8, 4×4 and 2×2.

    Args:
        widths: channels of the three stages.
        num_classes: K.
        in_channels: input channels.
        aux_heads: add auxiliary classifiers after stage1 and stage2.
    """

    def __init__(
        self,
        widths: Sequence[int] = (16, 32, 64),
        num_classes: int = 10,
        in_channels: int = 1,
        aux_heads: bool = False,
    ) -> None:
        if len(widths) != len(STAGES):
            raise ValueError(f"ConvNet needs {len(STAGES)} widths, got {tuple(widths)}")
        stages: list[nn.Module] = []
        c_in = in_channels
        for i, w in enumerate(widths):
            pool: list[nn.Module] = [nn.MaxPool2d(2)] if i > 0 else []
            stages.append(nn.Sequential(*pool, _conv_bn_relu(c_in, w), _conv_bn_relu(w, w)))
            c_in = w
        super().__init__(nn.Identity(), stages, widths, num_classes, aux_heads)


class ConvNet1d(StagedClassifier):
    """`ConvNet` for 1-D signals: 3 stages of `depth` conv-BN-ReLU (kernel `kernel`, same
    padding), max-pool by 2 at the start of stages 2 and 3.

    For MNIST-1D's 40-sample signals the stages run at lengths 40, 20 and 10; the auxiliary
    heads are `AuxHead1d`.

    Args:
        widths: channels of the three stages.
        num_classes: K.
        in_channels: input channels.
        aux_heads: add auxiliary classifiers after stage1 and stage2.
        depth: convolutions per stage, ≥ 1.
        kernel: odd kernel size of the convolutions.
    """

    def __init__(
        self,
        widths: Sequence[int] = (16, 32, 64),
        num_classes: int = 10,
        in_channels: int = 1,
        aux_heads: bool = False,
        depth: int = 2,
        kernel: int = 5,
    ) -> None:
        if len(widths) != len(STAGES):
            raise ValueError(f"ConvNet1d needs {len(STAGES)} widths, got {tuple(widths)}")
        if depth < 1 or kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"ConvNet1d needs depth ≥ 1 and an odd kernel, got depth {depth}, kernel {kernel}")
        stages: list[nn.Module] = []
        c_in = in_channels
        for i, w in enumerate(widths):
            pool: list[nn.Module] = [nn.MaxPool1d(2)] if i > 0 else []
            convs = [_conv_bn_relu1d(c_in if j == 0 else w, w, kernel) for j in range(depth)]
            stages.append(nn.Sequential(*pool, *convs))
            c_in = w
        super().__init__(nn.Identity(), stages, widths, num_classes, aux_heads, AuxHead1d)


class TransformerBlock(nn.Module):
    """Pre-LN Transformer encoder block over (B, N, D) tokens: multi-head self-attention, then an
    MLP of `mlp_ratio`·D with GELU; Linears truncated-normal (std 0.02) with bias 0, as ViT."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))  # type: ignore[no-any-return]


class PatchEmbed1d(nn.Module):
    """(B, C, *spatial) → (B, D, N): the input read as one signal (an image row by row), zero-padded
    at its end to a multiple of `patch`, cut into N patches of `patch` samples, each mapped
    linearly to D (a strided conv), plus Vaswani et al.'s fixed sinusoidal position code."""

    def __init__(self, in_channels: int, dim: int, patch: int) -> None:
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv1d(in_channels, dim, patch, stride=patch)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(2)
        x = self.proj(F.pad(x, (0, -x.shape[-1] % self.patch)))  # (B, D, N)
        d, n = x.shape[1], x.shape[2]
        pos = torch.arange(n, dtype=x.dtype, device=x.device)[:, None]
        freq = torch.exp(torch.arange(0, d, 2, dtype=x.dtype, device=x.device) * (-math.log(10000.0) / d))
        code = torch.stack([torch.sin(pos * freq), torch.cos(pos * freq)], dim=-1).flatten(1)[:, :d]  # (N, D)
        return x + code.T


class TransformerStage(nn.Module):
    """(B, C_in, N) → (B, C_out, N): a Linear to C_out where the widths differ, `depth`
    `TransformerBlock`s, and (the last stage) the final LayerNorm."""

    def __init__(self, c_in: int, c_out: int, depth: int, heads: int, final_norm: bool) -> None:
        super().__init__()
        self.proj: nn.Module = nn.Linear(c_in, c_out) if c_in != c_out else nn.Identity()
        self.blocks = nn.Sequential(*(TransformerBlock(c_out, heads) for _ in range(depth)))
        self.norm: nn.Module = nn.LayerNorm(c_out) if final_norm else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.blocks(self.proj(x.transpose(1, 2)))).transpose(1, 2)  # type: ignore[no-any-return]


class Transformer1d(StagedClassifier):
    """A Transformer over patches: another architecture family than the CNNs (OFA-KD's
    heterogeneous teachers), for any input read as a 1-D signal (`PatchEmbed1d`).

    Three stages of `depth` pre-LN blocks (`TransformerStage`) at `widths`, no class token: the
    embedding is the mean of the final LayerNorm's tokens, as every model here pools its last
    map. Stage features are (B, C, N), channels first like the 1-D CNN maps, so feature methods
    read them the same way; the auxiliary heads are `AuxHead1d` over the N tokens. For MNIST-1D's
    40 samples at patch 4: 10 tokens; for 8×8 digits: 16 tokens of 4 pixels (half rows).

    Args:
        widths: widths of the three stages.
        num_classes: K.
        in_channels: input channels.
        aux_heads: add auxiliary classifiers after stage1 and stage2.
        depth: blocks per stage, ≥ 1.
        patch: samples per token, ≥ 1.
        heads: attention heads; divides every width.
    """

    def __init__(
        self,
        widths: Sequence[int] = (32, 32, 64),
        num_classes: int = 10,
        in_channels: int = 1,
        aux_heads: bool = False,
        depth: int = 1,
        patch: int = 4,
        heads: int = 2,
    ) -> None:
        if len(widths) != len(STAGES):
            raise ValueError(f"Transformer1d needs {len(STAGES)} widths, got {tuple(widths)}")
        if depth < 1 or patch < 1 or heads < 1:
            raise ValueError(f"Transformer1d needs depth, patch and heads ≥ 1, got {depth}, {patch}, {heads}")
        stem = PatchEmbed1d(in_channels, widths[0], patch)
        ins = (widths[0], *widths[:-1])
        stages = [TransformerStage(c_in, w, depth, heads, final_norm=i == len(widths) - 1)
                  for i, (c_in, w) in enumerate(zip(ins, widths, strict=True))]
        super().__init__(stem, stages, widths, num_classes, aux_heads, AuxHead1d)


class BasicBlock(nn.Module):
    """ResNet basic block: conv3x3-BN-ReLU-conv3x3-BN, plus shortcut, then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:  # projection shortcut (option B of He et al.)
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(StagedClassifier):
    """CIFAR ResNet (He et al., CVPR 2016) in the form used by CRD and mdistiller.

    Stem conv3x3 in→filters[0] + BN + ReLU, then three stages of (depth − 2) / 6 basic blocks
    with filters[1:] channels at strides 1, 2, 2; global average pool; linear classifier.
    Features are the (post-ReLU) stage outputs.

    Args:
        depth: 6n + 2.
        filters: stem width and the three stage widths.
        num_classes: K.
        in_channels: input channels.
        aux_heads: add auxiliary classifiers after stage1 and stage2.
    """

    def __init__(
        self,
        depth: int,
        filters: Sequence[int],
        num_classes: int = 100,
        in_channels: int = 3,
        aux_heads: bool = False,
    ) -> None:
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 (8, 20, 32, ...), got {depth}")
        if len(filters) != 4:
            raise ValueError(f"expected 4 filter sizes (stem + 3 stages), got {tuple(filters)}")
        n = (depth - 2) // 6
        stem = _conv_bn_relu(in_channels, filters[0])
        stages: list[nn.Module] = []
        c_in = filters[0]
        for c_out, stride in zip(filters[1:], (1, 2, 2), strict=True):
            blocks = [
                BasicBlock(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1)
                for i in range(n)
            ]
            stages.append(nn.Sequential(*blocks))
            c_in = c_out
        super().__init__(stem, stages, filters[1:], num_classes, aux_heads)


ModelFactory = Callable[..., StagedClassifier]
MODELS: dict[str, ModelFactory] = {}


def register(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Register a factory `(num_classes, in_channels, aux_heads, **kwargs) -> model`."""

    def wrap(factory: ModelFactory) -> ModelFactory:
        if name in MODELS:
            raise ValueError(f"architecture {name!r} is already registered")
        MODELS[name] = factory
        return factory

    return wrap


register("convnet")(ConvNet)
register("convnet1d")(ConvNet1d)
register("transformer1d")(Transformer1d)

_RESNETS: dict[str, tuple[int, tuple[int, ...]]] = {
    "resnet8": (8, (16, 16, 32, 64)),
    "resnet20": (20, (16, 16, 32, 64)),
    "resnet56": (56, (16, 16, 32, 64)),
    "resnet110": (110, (16, 16, 32, 64)),
    "resnet8x4": (8, (32, 64, 128, 256)),
    "resnet32x4": (32, (32, 64, 128, 256)),
}


def _resnet_factory(depth: int, filters: tuple[int, ...]) -> ModelFactory:
    def factory(num_classes: int, in_channels: int, aux_heads: bool = False) -> CifarResNet:
        return CifarResNet(depth, filters, num_classes, in_channels, aux_heads)

    return factory


for _name, (_depth, _filters) in _RESNETS.items():
    register(_name)(_resnet_factory(_depth, _filters))


def build_model(
    arch: str, num_classes: int, in_channels: int, aux_heads: bool = False, **kwargs: Any
) -> StagedClassifier:
    """Build a registered architecture.

    Args:
        arch: registered name, e.g. "convnet" or "resnet32x4".
        num_classes: K.
        in_channels: input channels (1 for digits and MNIST-1D, 3 for CIFAR).
        aux_heads: add auxiliary classifiers after stage1 and stage2.
        **kwargs: architecture options, e.g. `widths` for "convnet" and "convnet1d".

    Returns:
        The model, with freshly initialised weights.

    Raises:
        ValueError: unknown architecture (the message lists the registered ones), or an
            option the architecture does not take.
    """
    if arch not in MODELS:
        raise ValueError(f"unknown architecture {arch!r}; valid: {', '.join(sorted(MODELS))}")
    factory = MODELS[arch]
    args = {"num_classes": num_classes, "in_channels": in_channels, "aux_heads": aux_heads}
    try:
        inspect.signature(factory).bind(**args, **kwargs)
    except TypeError as err:
        raise ValueError(f"bad options {sorted(kwargs)} for architecture {arch!r}: {err}") from err
    return factory(**args, **kwargs)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers excluded)."""
    return sum(p.numel() for p in model.parameters())
