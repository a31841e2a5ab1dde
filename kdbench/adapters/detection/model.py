"""A D-FINE-style DETR in plain PyTorch: CNN backbone, a light encoder, and a decoder whose every
layer predicts class logits and FDR box-edge distributions, refined residually layer by layer.

Peng et al., "D-FINE: Redefine Regression Task of DETRs as Fine-grained Distribution
Refinement", ICLR 2025. Differences from the official model, for CPU scale: multi-head
attention over two flattened feature levels instead of deformable attention, and a sine
embedding of the reference box as the query position. Contrastive denoising queries are a
training option (`denoising`, D-FINE's num_denoising; 0, the default, has none:
kdbench.adapters.detection.denoising).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, cast

import torch
from torch import Tensor, nn

from kdbench.adapters.detection.denoising import DenoisingGroup, contrastive_denoising_group
from kdbench.adapters.detection.fdr import distance2bbox, integral, weighting_function


@dataclass
class DetectorOutput:
    """Raw predictions, stacked over decoder layers (earliest first).

    Attributes:
        logits: (L, B, Q, C) sigmoid class logits.
        corners: (L, B, Q, 4, N+1) box-edge bin logits (left, top, right, bottom).
        boxes: (L, B, Q, 4) decoded boxes, normalised cx, cy, w, h.
        pre_boxes: (B, Q, 4) the first layer's conventional box head (the initial boxes).
        features: named maps, e.g. {"c3": (B, C, H, W), "c4": ..., "memory": (B, T, D)}.
        reg_scale, up: the FDR parameters the boxes were decoded with (the FGL targets need them).
        enc_logits, enc_boxes: (B, Q, C) and (B, Q, 4) the encoder's top-Q proposals (D-FINE's
            enc_aux_outputs), None when the queries are learnt (`query_select=False`).
        dn: the D denoising queries' own predictions, in the same fields ((L, B, D, C) logits ...,
            (B, D, 4) pre-boxes; no features or proposals): D-FINE's dn_outputs and
            dn_pre_outputs. None unless the model trains with denoising and was given targets;
            every other field holds the Q matching queries only.
        dn_group: the denoising queries' construction (their ground-truth matches), with `dn`.
    """

    logits: Tensor
    corners: Tensor
    boxes: Tensor
    pre_boxes: Tensor
    features: dict[str, Tensor]
    reg_scale: float
    up: float
    enc_logits: Tensor | None = None
    enc_boxes: Tensor | None = None
    dn: DetectorOutput | None = None
    dn_group: DenoisingGroup | None = None


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    x = x.clamp(eps, 1 - eps)
    return torch.log(x / (1 - x))


def sine_embedding(coords: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """(..., k) coordinates in [0, 1] → (..., k·dim/k) sine/cosine embedding."""
    per = dim // coords.shape[-1] // 2
    freq = temperature ** (torch.arange(per, device=coords.device, dtype=coords.dtype) / per)
    angles = coords[..., None] * 2 * math.pi / freq  # (..., k, per)
    return torch.cat([angles.sin(), angles.cos()], -1).flatten(-2)


def grid_positions(h: int, w: int, device: torch.device) -> Tensor:
    """(h·w, 2) cell centres (x, y) in [0, 1]."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return torch.stack([(xs.flatten() + 0.5) / w, (ys.flatten() + 0.5) / h], -1).float()


class MLP(nn.Sequential):
    def __init__(self, dims: list[int]) -> None:
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(pairwise(dims)):
            layers.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                layers.append(nn.ReLU())
        super().__init__(*layers)


def _conv(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class SmallBackbone(nn.Module):
    """Four stride-2 stages (one 3×3 conv in the two high-resolution ones, two in the others);
    returns the stride-8 and stride-16 maps (c3, c4)."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 96)) -> None:
        super().__init__()
        c1, c2, c3, c4 = widths
        self.stem = _conv(3, c1, 2)
        self.stage2 = _conv(c1, c2, 2)
        self.stage3 = nn.Sequential(_conv(c2, c3, 2), _conv(c3, c3, 1))
        self.stage4 = nn.Sequential(_conv(c3, c4, 2), _conv(c4, c4, 1))
        self.channels = (c3, c4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        c3 = self.stage3(self.stage2(self.stem(x)))
        return c3, self.stage4(c3)


class TimmBackbone(nn.Module):
    """A timm backbone (ResNet, HGNetV2 ...) returning its maps at two strides (16 and 32 by
    default). Weights start random: nothing is downloaded; pass a checkpoint to initialise."""

    def __init__(self, name: str, strides: tuple[int, int] = (16, 32)) -> None:
        super().__init__()
        import timm

        probe: Any = timm.create_model(name, pretrained=False, features_only=True)
        reductions = probe.feature_info.reduction()
        missing = [s for s in strides if s not in reductions]
        if missing:
            raise ValueError(f"backbone {name!r} has no stride {missing[0]}; strides: {reductions}")
        indices = tuple(reductions.index(s) for s in strides)
        body: Any = timm.create_model(name, pretrained=False, features_only=True, out_indices=indices)
        self.channels: tuple[int, ...] = tuple(body.feature_info.channels())
        self.body = body

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        c3, c4 = self.body(x)
        return c3, c4


class DecoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ffn = MLP([dim, ffn, dim])
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3))

    def forward(self, h: Tensor, query_pos: Tensor, memory: Tensor, memory_pos: Tensor,
                attn_mask: Tensor | None = None) -> Tensor:
        q = h + query_pos
        h = self.norms[0](h + self.self_attn(q, q, h, attn_mask=attn_mask, need_weights=False)[0])
        h = self.norms[1](h + self.cross_attn(h + query_pos, memory + memory_pos, memory, need_weights=False)[0])
        return self.norms[2](h + self.ffn(h))


class FDRDetector(nn.Module):
    """D-FINE-style detector: every decoder layer predicts class logits and edge distributions.

    Per layer l: L^l = L^{l−1} + MLP_l(h^l + sg(h^{l−1})) (residual distribution refinement),
    box^l = distance2bbox(sg(pre_box), Σ_n σ(L^l)_n·W(n), c); the next layer attends around
    sg(box^l). pre_box comes from a conventional box head on the first layer's output.

    Queries (`query_select=True`, D-FINE's and RT-DETR's default): every memory token gets a
    class score and a box (an offset from its grid anchor, 0.05·2^level wide); the Q tokens with
    the highest class score become the queries — content sg(token), reference sg(box) — and their
    scores and boxes are trained as the encoder proposals (Peterande/D-FINE 4a1f73a,
    src/zoo/dfine/dfine_decoder.py `_get_decoder_input`, `_select_topk`, `_generate_anchors`;
    `learn_query_content=False`). `query_select=False`: learnt content and reference boxes on a
    grid, with no encoder proposals (DETR-style; slower to converge).

    Denoising (`denoising` > 0, training only, given the targets): D-FINE's contrastive
    denoising queries (kdbench.adapters.detection.denoising) go before the Q matching queries,
    with content a learnt class embedding of their noised label (D-FINE's
    `denoising_class_embed`, an (C+1)-row embedding whose last row, padding, is zero) and
    reference their noised box; they pass through the same layers as the matching queries, with
    the same pre-box head and FDR refinement from their own detached initial box, and are split
    off again after the last layer (Peterande/D-FINE 4a1f73a, src/zoo/dfine/dfine_decoder.py
    lines 555-563, 797-799, 845-858, 881-888). The self-attention mask keeps the matching
    queries from seeing them, so the matching queries' predictions are those of the same
    weights without denoising. In eval mode the model has no denoising queries at all.
    """

    def __init__(
        self, num_classes: int, backbone: str = "small", widths: tuple[int, ...] = (16, 32, 64, 96),
        dim: int = 64, heads: int = 4, ffn: int = 256, layers: int = 3, queries: int = 20,
        reg_max: int = 32, up: float = 0.5, reg_scale: float = 4.0, encoder_layers: int = 1,
        strides: tuple[int, int] = (16, 32), query_select: bool = True, denoising: int = 0,
        label_noise: float = 0.5, box_noise: float = 1.0,
    ) -> None:
        super().__init__()
        if denoising < 0 or not 0 <= label_noise <= 1 or box_noise < 0:
            raise ValueError(f"denoising must be ≥ 0, label_noise in [0, 1], box_noise ≥ 0; got {denoising}, "
                             f"{label_noise}, {box_noise}")
        self.backbone: nn.Module = SmallBackbone(widths) if backbone == "small" else TimmBackbone(backbone, strides)
        c3, c4 = self.backbone.channels  # type: ignore[misc]
        self.proj = nn.ModuleList([nn.Conv2d(c3, dim, 1), nn.Conv2d(c4, dim, 1)])
        self.level_embed = nn.Parameter(torch.zeros(2, dim))
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(dim, heads, ffn, dropout=0.0, batch_first=True), encoder_layers,
            enable_nested_tensor=False)
        self.query_select, self.queries = query_select, queries
        if query_select:
            self.enc_output = nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim))
            self.enc_score_head = nn.Linear(dim, num_classes)
            self.enc_bbox_head = MLP([dim, dim, dim, 4])
        else:
            self.query_content = nn.Embedding(queries, dim)
            self.ref_logits = nn.Parameter(inverse_sigmoid(_anchor_grid(queries)))
        self.query_pos = MLP([dim, dim, dim])
        self.layers = nn.ModuleList(DecoderLayer(dim, heads, ffn) for _ in range(layers))
        self.score_heads = nn.ModuleList(nn.Linear(dim, num_classes) for _ in range(layers))
        self.corner_heads = nn.ModuleList(MLP([dim, dim, 4 * (reg_max + 1)]) for _ in range(layers))
        self.pre_box_head = MLP([dim, dim, 4])
        self.reg_max, self.reg_scale, self.up, self.dim = reg_max, reg_scale, up, dim
        self.register_buffer("project", weighting_function(reg_max, up, reg_scale), persistent=False)
        self._reset()
        self.num_classes, self.denoising = num_classes, denoising
        self.label_noise, self.box_noise = label_noise, box_noise
        if denoising > 0:  # created last: every other parameter starts as it does without denoising
            self.denoising_class_embed = nn.Embedding(num_classes + 1, dim, padding_idx=num_classes)
            nn.init.normal_(self.denoising_class_embed.weight[:-1])  # D-FINE's init (std 1)

    project: Tensor

    def _reset(self) -> None:
        prior = -math.log((1 - 0.01) / 0.01)  # focal-loss prior: initial sigmoid scores 0.01
        heads = [*self.score_heads, self.enc_score_head] if self.query_select else self.score_heads
        for head in heads:
            nn.init.constant_(cast(nn.Linear, head).bias, prior)
        boxes = [self.enc_bbox_head] if self.query_select else []
        for mlp in [*self.corner_heads, self.pre_box_head, *boxes]:
            last = cast(nn.Linear, cast(MLP, mlp)[-1])
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        nn.init.normal_(self.level_embed, std=0.02)

    def _memory(self, images: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor], list[tuple[int, int]]]:
        c3, c4 = self.backbone(images)
        maps = [p(c) for p, c in zip(self.proj, (c3, c4), strict=True)]
        tokens, pos = [], []
        for level, m in enumerate(maps):
            b, d, h, w = m.shape
            p = sine_embedding(grid_positions(h, w, m.device), d) + self.level_embed[level]
            t = m.flatten(2).transpose(1, 2)  # (B, h·w, D)
            if level == 1:  # the coarsest level goes through the encoder (AIFI-like)
                t = self.encoder(t + p)
            tokens.append(t)
            pos.append(p.expand(b, -1, -1))
        memory = torch.cat(tokens, 1)
        shapes = [(m.shape[2], m.shape[3]) for m in maps]
        return memory, torch.cat(pos, 1), {"c3": c3, "c4": c4, "memory": memory}, shapes

    def _select(self, memory: Tensor, shapes: list[tuple[int, int]]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The top-Q memory tokens by class score: (content, reference box logits, their class
        logits, their boxes); the first two detached, as the decoder's inputs."""
        tokens = self.enc_output(memory)  # (B, T, D)
        scores = self.enc_score_head(tokens)  # (B, T, C)
        index = scores.max(-1).values.topk(self.queries, dim=1).indices  # (B, Q)

        def take(x: Tensor) -> Tensor:
            return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))

        anchors = token_anchors(shapes, memory.device).expand(memory.shape[0], -1, -1)
        top = take(tokens)
        box_logits = self.enc_bbox_head(top) + take(anchors)
        return top.detach(), box_logits.detach(), take(scores), box_logits.sigmoid()

    def forward(self, images: Tensor, targets: tuple[list[Tensor], list[Tensor]] | None = None,
                generator: torch.Generator | None = None) -> DetectorOutput:
        """Predictions of every decoder layer for the Q matching queries (and, training with
        denoising, the denoising queries' in `dn`).

        Args:
            images: (B, 3, S, S).
            targets: per image (labels (n_i,), boxes (n_i, 4) cx, cy, w, h), the ground truth the
                denoising queries are built from; read only in training mode with `denoising` > 0.
            generator: the CPU generator the denoising noise is drawn from; None: the global one.
        """
        memory, memory_pos, features, shapes = self._memory(images)
        b = images.shape[0]
        enc_logits = enc_boxes = None
        if self.query_select:
            h, ref_logits, enc_logits, enc_boxes = self._select(memory, shapes)
            ref = ref_logits.sigmoid()
        else:
            h = self.query_content.weight.expand(b, -1, -1)
            ref_logits = self.ref_logits
            ref = self.ref_logits.sigmoid().expand(b, -1, -1).detach()
        group = self._denoising_group(targets, generator)
        attn_mask = None
        if group is not None and group.size:  # [denoising, matching] queries (dfine_decoder.py 797-799)
            dn_ref_logits = inverse_sigmoid(group.boxes)
            h = torch.cat([self.denoising_class_embed(group.labels), h], 1)
            ref_logits = torch.cat([dn_ref_logits, ref_logits.expand(b, -1, -1)], 1)
            ref = torch.cat([dn_ref_logits.sigmoid(), ref], 1)
            attn_mask = group.attn_mask
        h_prev = torch.zeros_like(h)
        corners_prev: Tensor | None = None
        init: Tensor | None = None
        pre_boxes = ref
        all_logits, all_corners, all_boxes = [], [], []
        for i, layer in enumerate(self.layers):
            query_pos = self.query_pos(sine_embedding(ref, self.dim))
            h = layer(h, query_pos, memory, memory_pos, attn_mask)
            if init is None:
                pre_boxes = (self.pre_box_head(h) + ref_logits).sigmoid()
                init = pre_boxes.detach()
            delta = self.corner_heads[i](h + h_prev).view(b, -1, 4, self.reg_max + 1)
            corners = delta if corners_prev is None else delta + corners_prev
            boxes = distance2bbox(init, integral(corners, self.project), self.reg_scale)
            all_logits.append(self.score_heads[i](h))
            all_corners.append(corners)
            all_boxes.append(boxes)
            corners_prev, h_prev, ref = corners, h.detach(), boxes.detach()
        logits, corners, boxes = torch.stack(all_logits), torch.stack(all_corners), torch.stack(all_boxes)
        dn = None
        if group is not None:  # split off the denoising queries (dfine_decoder.py 881-888)
            d = group.size
            dn = DetectorOutput(logits[:, :, :d], corners[:, :, :d], boxes[:, :, :d], pre_boxes[:, :d], {},
                                self.reg_scale, self.up)
            logits, corners, boxes, pre_boxes = logits[:, :, d:], corners[:, :, d:], boxes[:, :, d:], pre_boxes[:, d:]
        return DetectorOutput(logits, corners, boxes, pre_boxes, features, self.reg_scale, self.up, enc_logits,
                              enc_boxes, dn, group)

    def _denoising_group(self, targets: tuple[list[Tensor], list[Tensor]] | None,
                         generator: torch.Generator | None) -> DenoisingGroup | None:
        if not (self.training and self.denoising > 0 and targets is not None):
            return None
        labels, boxes = targets
        return contrastive_denoising_group(labels, boxes, self.num_classes, self.queries, self.denoising,
                                           self.label_noise, self.box_noise, generator)


def token_anchors(shapes: list[tuple[int, int]], device: torch.device, size: float = 0.05) -> Tensor:
    """(1, T, 4) inverse-sigmoid anchors of the memory tokens: each level's cell centres,
    size·2^level wide and high (RT-DETR's and D-FINE's `_generate_anchors`, grid_size 0.05)."""
    anchors = []
    for level, (h, w) in enumerate(shapes):
        centres = grid_positions(h, w, device)
        anchors.append(torch.cat([centres, torch.full_like(centres, size * 2.0**level)], -1))
    return inverse_sigmoid(torch.cat(anchors))[None]


def _anchor_grid(queries: int, size: float = 0.3) -> Tensor:
    """(Q, 4) cx, cy, w, h: Q anchor boxes on the most square grid that holds Q."""
    cols = math.ceil(math.sqrt(queries))
    rows = math.ceil(queries / cols)
    cells = grid_positions(rows, cols, torch.device("cpu"))[:queries]
    return torch.cat([cells, torch.full((queries, 2), size)], -1)

