"""Detection: a D-FINE-style DETR on synthetic shapes (embedded) or COCO 2017 (the user's files)."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torchvision.ops import box_convert

from kdbench.adapters.base import Adapter, Role
from kdbench.adapters.detection import data as D
from kdbench.adapters.detection.denoising import cdn_matches
from kdbench.adapters.detection.evaluate import coco_detection_metrics, to_coco_results
from kdbench.adapters.detection.fdr import bbox2distance, rebin_edges
from kdbench.adapters.detection.losses import DetectionLoss
from kdbench.adapters.detection.matcher import hungarian_match_sets, union_matches
from kdbench.adapters.detection.model import DetectorOutput, FDRDetector
from kdbench.adapters.detection.targets import Batch, DetectionOutputs, Pairs, matched_iou, query_labels, query_mask
from kdbench.adapters.splits import check_split
from kdbench.cache import cache_dir, sha256_json
from kdbench.errors import KDBenchError, UsageError
from kdbench.outputs import Head, HeadKind, Rebin
from kdbench.protocol import Protocol

DATASETS = ("shapes", "coco2017")
ARCHS = ("fdr-detr",)


class DetectionAdapter(Adapter[Batch, DetectionOutputs]):
    """Heads "cls" (B, Q, C) and "box" (B, Q, 4, N+1) per decoder layer; teacher Outputs are
    aligned to the student's by ground-truth matches (the final layers' Hungarian matches).

    "cls" (binary: VFL's independent sigmoid per class): target = the matched ground truth's
    class, mask = the layer's matched queries.
    "box" (binned, relative: a softmax over each edge's N+1 bins, offsets from the model's own
    initial box): every query valid; target = the bin nearest each ground-truth edge at matched
    queries; weight and matched = GO-LSD's DDF weight (IoU for union-matched queries, else the
    final layer's max class score) and the union's matched queries, computed only for a method
    that requests `union_matching` (None otherwise: no other method reads them). A teacher's box
    head is re-expressed on the student's bins (`align`).

    A model trained with denoising queries (card `denoising: N`, kdbench.adapters.detection.
    denoising) gets them in training only; its heads, layers, matches and evaluation are the Q
    matching queries'. The denoising queries' per-layer heads, built as above with their
    constructed matches instead of the Hungarian ones, are `Outputs.auxiliary["denoising"]`:
    only GO-LSD reads them (D-FINE runs its DDF on dn_outputs); `align` never passes them on.
    """

    task = "detection"
    provides = frozenset({"layers", "features", "ids"})
    # cls: VFL's independent sigmoid per class; box: a softmax over each edge's N+1 bins, offsets
    # from the model's own initial box (relative: a teacher's reaches the student re-expressed)
    head_kinds: ClassVar[dict[str, HeadKind]] = {"cls": "binary", "box": "binned"}
    relative_heads = frozenset({"box"})
    # GO-LSD's union of every layer's matches, for the box losses and the box heads' DDF weights
    honours = frozenset({"union_matching"})
    # 2: train/val/test (shapes: n_test scenes; COCO: val held out of train2017); 3: the queries are
    # selected from the encoder (D-FINE), not learnt: every detection number and teacher changed
    evaluation_version = 3
    train_subsets = True

    def __init__(self, protocol: Protocol, data_root: Path | None, device: torch.device) -> None:
        super().__init__(protocol, data_root, device)
        card = protocol.card
        self.size = int(card["data"].get("size", 64))
        self.train_set, self.val_set, self.test_set = self._load(card["data"])
        self.num_classes = len(self.train_set.category_ids)
        self.flip = float(card.get("augmentation", {}).get("hflip", 0.0))
        self.matcher = dict(card.get("matcher", {}))
        self.loss = DetectionLoss(**card.get("loss", {}))
        self.union = False

    def _load(self, spec: dict[str, Any]) -> tuple[D.DetectionSet, D.DetectionSet, D.DetectionSet]:
        name = spec.get("dataset")
        try:
            if name == "shapes":
                params = {k: spec[k] for k in ("n_train", "n_val", "n_test", "size", "max_objects", "seed")}
                key = sha256_json({**params, "version": D.SHAPES_VERSION})[:16]
                root = D.make_shapes_dataset(cache_dir() / "data" / f"shapes-{key}", **params)
                return tuple(D.load_shapes(root, s, self.size) for s in ("train", "val", "test"))  # type: ignore[return-value]
            if name == "coco2017":
                if self.data_root is None:
                    raise UsageError("COCO 2017 needs --data-root (or KDBENCH_DATA_ROOT): the folder with "
                                     "annotations/instances_{train,val}2017.json, train2017/ and val2017/")
                limits = spec.get("limit_train"), spec.get("limit_val"), spec.get("limit_test")
                return D.load_coco2017_splits(self.data_root, self.size, int(spec["val_images"]),
                                              int(spec.get("split_seed", 0)), cache_dir() / "data" / "coco-gt",
                                              limits)
        except KeyError as e:
            raise UsageError(f"protocol {self.protocol.name!r} data: missing key {e}") from None
        except FileNotFoundError as e:
            raise KDBenchError(str(e)) from None
        except ValueError as e:
            raise UsageError(f"protocol {self.protocol.name!r} data: {e}") from None
        raise UsageError(f"unknown detection dataset {name!r}; valid: {', '.join(DATASETS)}")

    def configure(self, needs: frozenset[str]) -> None:
        self.union = "union_matching" in needs  # forward computes GO-LSD's union and DDF weights

    @property
    def train_size(self) -> int:
        return len(self.train_set.image_ids)

    def keep_train(self, indices: Tensor) -> None:
        """The training images at `indices` with their boxes and labels (Adapter.keep_train)."""
        data, idx, rows = self.train_set, indices.cpu(), indices.tolist()
        self.train_set = replace(
            data, boxes=[data.boxes[i] for i in rows], labels=[data.labels[i] for i in rows],
            image_ids=[data.image_ids[i] for i in rows], orig_sizes=data.orig_sizes[idx],
            images=None if data.images is None else data.images[idx],
            files=None if data.files is None else [data.files[i] for i in rows])

    def train_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        order = torch.randperm(self.train_size, generator=generator)
        noise = generator.initial_seed()  # read, not drawn: the data order and flips stay as without denoising
        for start in range(0, self.train_size, batch_size):
            idx = order[start:start + batch_size]
            images = self.train_set.get_images(idx).float() / 255
            boxes = [self.train_set.boxes[i] for i in idx.tolist()]
            labels = [self.train_set.labels[i] for i in idx.tolist()]
            if self.flip:
                images, boxes = D.hflip_batch(images, boxes, generator, self.flip)
            yield Batch(images.to(self.device), [t.to(self.device) for t in labels],
                        [b.to(self.device) for b in boxes], idx.to(self.device),
                        torch.tensor([noise_seed(noise, start + j) for j in range(len(idx))], device=self.device))

    def build_model(self, role: Role, needs: frozenset[str]) -> nn.Module:
        spec = dict(self.protocol.card[role])
        arch = spec.pop("arch")
        for key in ("seed", "train"):
            spec.pop(key, None)
        if arch not in ARCHS:
            raise UsageError(f"protocol {self.protocol.name!r} {role}: unknown architecture {arch!r}; "
                             f"valid: {', '.join(ARCHS)}")
        for key in ("widths", "strides"):
            if key in spec:
                spec[key] = tuple(spec[key])
        return FDRDetector(self.num_classes, **spec)

    def arch_name(self, role: Role) -> str:
        """e.g. "fdr-detr/small-16-32-64-96/d64/L3/Q20/N32/select": what sizes a record's model
        ("/select": queries selected from the encoder's tokens)."""
        defaults = {k: p.default for k, p in inspect.signature(FDRDetector).parameters.items()}
        spec = {**defaults, **self.protocol.card[role]}
        backbone = spec["backbone"]
        if backbone == "small":
            backbone += "-" + "-".join(str(w) for w in spec["widths"])
        name = f"{spec['arch']}/{backbone}/d{spec['dim']}/L{spec['layers']}/Q{spec['queries']}/N{spec['reg_max']}"
        name += "/select" if spec["query_select"] else ""
        return name + (f"/dn{spec['denoising']}" if spec["denoising"] else "")  # "/dn8": trained with denoising

    def forward(self, model: nn.Module, batch: Batch) -> DetectionOutputs:
        if model.training and isinstance(model, FDRDetector) and model.denoising > 0:
            seed = int(batch.noise_seeds[0]) if batch.noise_seeds is not None and len(batch.noise_seeds) else 0
            raw = model(batch.images, (batch.labels, batch.boxes), torch.Generator().manual_seed(seed))
        else:
            raw = model(batch.images)
        # every layer, then the pre-box head, then (query selection) the encoder proposals
        logits, boxes = [raw.logits, raw.logits[:1]], [raw.boxes, raw.pre_boxes[None]]
        if raw.enc_logits is not None and raw.enc_boxes is not None:
            logits.append(raw.enc_logits[None])
            boxes.append(raw.enc_boxes[None])
        sets = hungarian_match_sets(torch.cat(logits), torch.cat(boxes), batch.labels, batch.boxes, **self.matcher)
        layers_n = raw.logits.shape[0]
        per_layer, pre, enc = sets[:layers_n], sets[layers_n], sets[layers_n + 1:]
        pairs = [Pairs.of(m, batch) for m in per_layer]
        union, union_pairs = [], None  # GO-LSD's, only on its request (`honours`)
        if self.union:
            union = union_matches([*per_layer, pre, *enc])  # D-FINE's union holds the encoder's matches too
            union_pairs = Pairs.of(union, batch)
        layers = self._layers(raw, pairs, union_pairs, batch)
        auxiliary, dn_pairs = {}, None
        if raw.dn is not None and raw.dn_group is not None:  # every dn layer is trained on the same matches
            dn_pairs = Pairs.of(cdn_matches(raw.dn_group, batch.labels), batch)
            auxiliary["denoising"] = self._layers(raw.dn, [dn_pairs] * len(pairs), dn_pairs if self.union else None,
                                                  batch)
        return DetectionOutputs(heads=layers[-1], layers=layers, features={"c3": raw.features["c3"],
                                "c4": raw.features["c4"]}, ids=batch.ids, auxiliary=auxiliary, raw=raw,
                                batch=batch, matches=per_layer, pre_matches=pre, union=union, pairs=pairs,
                                pre_pairs=Pairs.of(pre, batch), union_pairs=union_pairs,
                                enc_pairs=Pairs.of(enc[0], batch) if enc else None, dn_pairs=dn_pairs)

    def _layers(self, raw: DetectorOutput, pairs: list[Pairs], union_pairs: Pairs | None,
                batch: Batch) -> list[dict[str, Head]]:
        """Per layer {"cls", "box"} heads of `raw`'s queries: class targets and masks from each
        layer's `pairs`, edge-bin targets from them too; DDF weights and matched flags from
        `union_pairs` when given (GO-LSD's request), else none."""
        b, q = raw.logits.shape[1:3]
        device = raw.logits.device
        ddf = self._ddf(raw, len(pairs), union_pairs, batch) if union_pairs is not None else [(None, None)] * len(pairs)
        layers = []
        for i, layer_pairs in enumerate(pairs):
            cls = Head(raw.logits[i], query_labels(layer_pairs, batch, (b, q), device),
                       mask=query_mask(layer_pairs, (b, q), device), kind="binary")
            weight, matched = ddf[i]
            box = Head(raw.corners[i], self._edge_bins(raw, layer_pairs, batch), weight=weight, matched=matched,
                       kind="binned")
            layers.append({"cls": cls, "box": box})
        return layers

    @torch.no_grad()
    def _ddf(self, raw: DetectorOutput, layers: int, union: Pairs, batch: Batch) -> list[tuple[Tensor, Tensor]]:
        """Per layer, the box head's (B, Q, 4) DDF weights and matched flags (GO-LSD): the union's
        matched queries, each weighted by its box's IoU with its ground truth, the others by the
        final layer's max class score."""
        b, q = raw.logits.shape[1:3]
        matched = query_mask(union, (b, q), raw.logits.device)[..., None].expand(-1, -1, 4)
        final_conf = raw.logits[-1].sigmoid().max(-1).values  # (B, Q) the final layer's confidence
        return [(self._ddf_weight(raw.boxes[i], union, batch, final_conf)[..., None].expand(-1, -1, 4), matched)
                for i in range(layers)]

    @torch.no_grad()
    def _edge_bins(self, raw: DetectorOutput, pairs: Pairs, batch: Batch) -> Tensor:
        """(B, Q, 4) long: for matched queries, the bin nearest each ground-truth edge (the larger
        of FGL's two interpolation weights) — the hard target of the edge distributions."""
        b, q = raw.logits.shape[1:3]
        bins = torch.zeros(b, q, 4, dtype=torch.long, device=raw.logits.device)
        gt = box_convert(batch.all_boxes[pairs.gt], "cxcywh", "xyxy")
        left, w_left, w_right = bbox2distance(raw.pre_boxes[pairs.batch, pairs.query], gt, raw.corners.shape[-1] - 1,
                                              raw.reg_scale, raw.up)
        bins[pairs.batch, pairs.query] = torch.where(w_left >= w_right, left, left + 1)
        return bins

    @torch.no_grad()
    def _ddf_weight(self, boxes: Tensor, union: Pairs, batch: Batch, conf: Tensor) -> Tensor:
        """(B, Q): IoU with the ground truth for union-matched queries, else the final max score."""
        weight = conf.clone()
        iou = matched_iou(boxes[union.batch, union.query], batch.all_boxes[union.gt])
        weight[union.batch, union.query] = iou.to(weight.dtype)
        return weight

    def align(self, student: DetectionOutputs, teacher: DetectionOutputs) -> DetectionOutputs:
        """The teacher's final heads re-indexed so that, for every ground-truth object, the teacher
        query matched to it sits at the student query matched to it; other queries are masked.

        The box head's bins are offsets from each model's own initial box, so the teacher's edge
        distributions are not copied bin for bin: the aligned head keeps the teacher's logits and
        carries a `Rebin` (`fdr.rebin_edges`, teacher pre-box → student pre-box and bins) that
        methods which rebin apply to the teacher's tempered distribution (`Head.in_frame`), the
        shared frame that localization distillation compares edge distributions in (Zheng et al.,
        "Localization Distillation for Dense Object Detection", CVPR 2022: teacher and student
        predict at the same anchors, open-mmlab/mmdetection at 0b4d8a4, mmdet/models/dense_heads/ld_head.py
        `LDHead.loss_single`, the teacher's `soft_corners` at the student's `pos_inds`). Here
        there are no shared anchors, so the frame is made: each teacher bin's edge position is
        expressed on the student's reference and bins as FGL's two-bin targets are.
        """
        s_match, t_match = student.matches[-1], teacher.matches[-1]
        pairs = []  # (image, student query, teacher query) for each ground truth both matched
        for b, ((s_rows, s_cols), (t_rows, t_cols)) in enumerate(zip(s_match, t_match, strict=True)):
            s_of_gt = {int(g): int(r) for r, g in zip(s_rows, s_cols, strict=True)}
            pairs += [(b, s_of_gt[int(g)], int(r)) for r, g in zip(t_rows, t_cols, strict=True) if int(g) in s_of_gt]
        device = teacher.heads["cls"].logits.device
        bi, si, ti = (torch.tensor(x, dtype=torch.long, device=device)
                      for x in (zip(*pairs, strict=True) if pairs else ([], [], [])))
        heads = {}
        for name, head in teacher.heads.items():
            logits = torch.zeros_like(head.logits)
            logits[bi, si] = head.logits[bi, ti]
            mask = torch.zeros(head.logits.shape[:2], dtype=torch.bool, device=device)
            mask[bi, si] = True
            mask = mask.view(*mask.shape, *([1] * (head.logits.dim() - 3))).expand(head.logits.shape[:-1])
            rebin = self._rebin(student, teacher, (bi, si, ti)) if name in self.relative_heads else None
            heads[name] = replace(head, logits=logits, mask=mask, weight=None, matched=None, rebin=rebin,
                                  target=None if head.target is None else student.heads[name].target)
        return DetectionOutputs(heads=heads, features=teacher.features, ids=teacher.ids)

    @torch.no_grad()
    def _rebin(self, student: DetectionOutputs, teacher: DetectionOutputs,
               pairs: tuple[Tensor, Tensor, Tensor]) -> Rebin:
        """(B, Q, 4, N_T+1) map of the teacher's edge bins at the aligned positions onto the student's
        bins: teacher bin n of a matched query as two-bin weights on the student query's pre-box and
        bins (`fdr.rebin_edges`); unmatched positions (masked) put everything on bin 0."""
        s_raw, t_raw = student.raw, teacher.raw
        assert s_raw is not None and t_raw is not None
        bi, si, ti = pairs
        shape = t_raw.corners.shape[1:]  # (B, Q, 4, N_T + 1)
        left = torch.zeros(shape, dtype=torch.long, device=t_raw.corners.device)
        w_left, w_right = torch.ones(shape, device=left.device), torch.zeros(shape, device=left.device)
        bins, wl, wr = rebin_edges(t_raw.pre_boxes[bi, ti], s_raw.pre_boxes[bi, si], shape[-1] - 1,
                                   s_raw.corners.shape[-1] - 1, t_raw.reg_scale, t_raw.up, s_raw.reg_scale, s_raw.up)
        left[bi, si], w_left[bi, si], w_right[bi, si] = bins, wl.to(w_left.dtype), wr.to(w_right.dtype)
        return Rebin(left, w_left, w_right, s_raw.corners.shape[-1])

    def task_loss(self, outputs: DetectionOutputs) -> dict[str, Tensor]:
        """VFL per layer with its own matches; L1, GIoU and FGL with its own or (GO-LSD) the union."""
        assert outputs.raw is not None and outputs.batch is not None and outputs.pre_pairs is not None
        return self.loss(outputs.raw, outputs.batch, outputs.pairs, outputs.pre_pairs,
                         outputs.union_pairs, outputs.enc_pairs, outputs.dn_pairs)  # union: GO-LSD's request only

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        sets = {"train": self.train_set, "val": self.val_set, "test": self.test_set}
        data = sets[check_split(split, tuple(sets), self.task)]
        was_training = model.training
        model.eval()
        detections: list[dict[str, Any]] = []
        for start in range(0, len(data.image_ids), 64):
            idx = torch.arange(start, min(start + 64, len(data.image_ids)))
            out = model((data.get_images(idx).float() / 255).to(self.device))
            ids = [data.image_ids[i] for i in idx.tolist()]
            detections += to_coco_results(out.logits[-1].sigmoid().cpu(), out.boxes[-1].cpu(), ids,
                                          data.category_ids, data.orig_sizes[idx], top_k=int(self.protocol.get(
                                              "eval.top_k", 100)))
        model.train(was_training)
        return coco_detection_metrics(data.ann_file, detections, data.image_ids)  # type: ignore[return-value]

    def example_input(self) -> Tensor:
        return (self.val_set.get_images(torch.arange(1)).float() / 255).to(self.device)


def noise_seed(epoch_seed: int, position: int) -> int:
    """The denoising seed of the sample at `position` in the epoch's order, from the seed of the
    epoch's data generator (an odd-multiplier mix: distinct positions get distinct seeds, none
    the data generator's own)."""
    return (epoch_seed * 0x9E3779B97F4A7C15 + (position + 1) * 0xBF58476D1CE4E5B9) % (2**63 - 1)
