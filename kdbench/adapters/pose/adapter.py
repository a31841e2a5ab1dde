"""Pose: a top-down SimCC estimator on synthetic figures (embedded) or COCO / COCO-WholeBody."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.adapters.base import Adapter, Role
from kdbench.adapters.pose import data as D
from kdbench.adapters.pose.evaluate import keypoint_results, oks_metrics
from kdbench.adapters.pose.model import SimCCPose
from kdbench.adapters.pose.simcc import simcc_decode, simcc_targets
from kdbench.adapters.pose.skeleton import flip_index, sigmas_for
from kdbench.adapters.pose.synthetic import VERSION as FIGURES_VERSION
from kdbench.adapters.pose.synthetic import make_figures_dataset
from kdbench.adapters.splits import check_split
from kdbench.cache import cache_dir, sha256_json
from kdbench.errors import KDBenchError, UsageError
from kdbench.losses.pose import simcc_kl
from kdbench.outputs import Head, HeadKind, Outputs
from kdbench.protocol import Protocol

DATASETS = ("figures", "coco", "coco-wholebody")
_COCO_FILES = {  # dataset → (annotation json pattern, how to get it)
    "coco": ("person_keypoints_{split}2017.json", "https://cocodataset.org/#download "
             "(annotations_trainval2017.zip, train2017.zip, val2017.zip)"),
    "coco-wholebody": ("coco_wholebody_{split}_v1.0.json", "https://github.com/jin-s13/COCO-WholeBody "
                       "(annotations) and https://cocodataset.org/#download (images)"),
}
_MODEL_KEYS = ("arch", "seed", "train")


@dataclass
class Batch:
    images: Tensor  # (B, 3, H, W) float in [0, 1]
    keypoints: Tensor  # (B, K, 3) crop x, y, v
    target_x: Tensor  # (B, K, Wx) label distribution
    target_y: Tensor  # (B, K, Wy)
    weight: Tensor  # (B, K) keypoint weights
    ids: Tensor  # (B,) instance indices


class PoseAdapter(Adapter[Batch, Outputs]):
    """Heads "simcc_x" (B, K, Wx) and "simcc_y" (B, K, Wy): logits β·z of the distributions
    σ(β·z) that RTMPose's loss trains (β = `loss.beta`, 10); target = the label distribution
    σ(β_label·Gaussian); weight = the keypoint weight (labeled and inside the crop), mask =
    weight > 0. Features: the backbone stages "stage1" … (earliest first; the last is DWPose's).
    Student and teacher crops are the same, so keypoints are aligned as they are.

    Served: methods on categorical heads (kd, dkd, nkd, taid, bdkd), feature methods (mlkd,
    dwpose), the head-only stage, and pskd (`label_heads`: its target mixes the Gaussian label
    distribution, in place of the one-hot, with the previous epoch's prediction). Not served:
    methods that need one prediction per sample (`sample_heads`: uskd, nd, dhkd) or heads
    trained with cross-entropy on hard labels (`ce_heads`: ls, which smooths a one-hot) — SimCC
    heads are K distributions per sample trained towards Gaussian soft labels — and per-layer heads
    (`layers`: gold, lsskd), as the SimCC head has a single stage.
    """

    task = "pose"
    provides = frozenset({"features", "ids", "head_stage", "label_heads"})
    # SimCC: a softmax over the W bins of a keypoint's x (y) in the crop, the same pixel bins in every model
    head_kinds: ClassVar[dict[str, HeadKind]] = {"simcc_x": "binned", "simcc_y": "binned"}
    evaluation_version = 2  # 2: train/val/test (figures: n_test images; COCO: val held out of train2017)
    train_subsets = True

    def __init__(self, protocol: Protocol, data_root: Path | None, device: torch.device) -> None:
        super().__init__(protocol, data_root, device)
        card = protocol.card
        w, h = card["data"].get("input_size", [48, 64])
        self.input_size = (int(w), int(h))
        simcc = card.get("simcc", {})
        self.split_ratio = float(simcc.get("split_ratio", 2.0))
        sigma_x, sigma_y = simcc.get("sigma", [1.225, 1.415])
        self.sigma = (float(sigma_x), float(sigma_y))
        loss = card.get("loss", {})
        self.beta, self.label_beta = float(loss.get("beta", 10.0)), float(loss.get("label_beta", 10.0))
        self.flip = float(card.get("augmentation", {}).get("hflip", 0.0))
        self.train_set, self.val_set, self.test_set = self._load(card["data"])
        self.num_keypoints = self.train_set.num_keypoints
        self.flip_index = flip_index(self.num_keypoints) if self.flip else []
        self.sigmas = sigmas_for(self.num_keypoints)

    def _load(self, spec: dict[str, Any]) -> tuple[D.PoseSet, D.PoseSet, D.PoseSet]:
        name = spec.get("dataset")
        try:
            if name == "figures":
                params = {k: spec[k] for k in ("n_train", "n_val", "n_test", "size", "seed")}
                key = sha256_json({**params, "version": FIGURES_VERSION})[:16]
                root = make_figures_dataset(cache_dir() / "data" / f"figures-{key}", **params)
                return tuple(  # type: ignore[return-value]
                    D.load_coco_keypoints(root / "annotations" / f"person_keypoints_{s}.json", root / s,
                                          self.input_size, preload=True) for s in ("train", "val", "test"))
            if name in _COCO_FILES:
                return self._load_coco(name, spec)
        except KeyError as e:
            raise UsageError(f"protocol {self.protocol.name!r} data: missing key {e}") from None
        except FileNotFoundError as e:
            raise KDBenchError(str(e)) from None
        except ValueError as e:
            raise UsageError(f"protocol {self.protocol.name!r} data: {e}") from None
        raise UsageError(f"unknown pose dataset {name!r}; valid: {', '.join(DATASETS)}")

    def _load_coco(self, name: str, spec: dict[str, Any]) -> tuple[D.PoseSet, D.PoseSet, D.PoseSet]:
        """val = `val_images` train2017 images with persons held out (`split_seed`), train = the
        other train2017 images, test = val2017."""
        pattern, source = _COCO_FILES[name]
        if self.data_root is None:
            raise UsageError(f"{name} needs --data-root (or KDBENCH_DATA_ROOT): the folder with "
                             f"annotations/{pattern.format(split='{train,val}')}, train2017/ and "
                             f"val2017/ (from {source})")
        anns = {split: self.data_root / "annotations" / pattern.format(split=split) for split in ("train", "val")}
        for ann in anns.values():
            if not ann.is_file():
                raise KDBenchError(f"{ann} not found; download it from {source}")
        limits = spec.get("limit_train"), spec.get("limit_val"), spec.get("limit_test")
        return D.load_coco_keypoint_splits(
            anns["train"], self.data_root / "train2017", anns["val"], self.data_root / "val2017", self.input_size,
            int(spec["val_images"]), int(spec.get("split_seed", 0)), cache_dir() / "data" / "coco-gt",
            wholebody=name == "coco-wholebody", limits=limits)

    @property
    def train_size(self) -> int:
        return len(self.train_set)

    def keep_train(self, indices: Tensor) -> None:
        """The person instances at `indices` (Adapter.keep_train): their keypoints, boxes, ids,
        files and preloaded crops; an image's other persons may be left out."""
        data, idx, rows = self.train_set, indices.cpu(), indices.tolist()
        self.train_set = replace(
            data, keypoints=data.keypoints[idx], centers=data.centers[idx], scales=data.scales[idx],
            image_ids=[data.image_ids[i] for i in rows], ann_ids=[data.ann_ids[i] for i in rows],
            files=[data.files[i] for i in rows], crops=None if data.crops is None else data.crops[idx])

    def train_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        order = torch.randperm(self.train_size, generator=generator)
        for start in range(0, self.train_size, batch_size):
            idx = order[start:start + batch_size]
            crops, kp = self.train_set.get_crops(idx), self.train_set.keypoints[idx]
            if self.flip:
                flip = torch.rand(len(idx), generator=generator) < self.flip
                crops, kp = D.hflip(crops, kp, self.flip_index, flip)
            yield self._batch(crops, kp, idx)

    def _batch(self, crops: Tensor, keypoints: Tensor, ids: Tensor) -> Batch:
        tx, ty, weight = simcc_targets(keypoints, self.input_size, self.sigma, self.split_ratio)
        qx, qy = (F.softmax(t * self.label_beta, -1) for t in (tx, ty))  # mmpose's label_softmax
        dev = self.device
        return Batch((crops.float() / 255).to(dev), keypoints.to(dev), qx.to(dev), qy.to(dev),
                     weight.to(dev), ids.to(dev))

    def build_model(self, role: Role, needs: frozenset[str]) -> nn.Module:
        spec = dict(self.protocol.card[role])
        arch = spec.get("arch")
        if arch != "simcc":
            raise UsageError(f"protocol {self.protocol.name!r} {role}: unknown architecture {arch!r}; valid: simcc")
        kwargs: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                                  for k, v in spec.items() if k not in _MODEL_KEYS}
        try:
            return SimCCPose(self.num_keypoints, self.input_size, split_ratio=self.split_ratio, **kwargs)
        except (TypeError, RuntimeError) as e:
            raise UsageError(f"protocol {self.protocol.name!r} {role}: {e}") from None

    def arch_name(self, role: Role) -> str:
        """e.g. "simcc/small-16-32-64/h128/48x64"."""
        spec = self.protocol.card[role]
        backbone = spec.get("backbone", "small")
        if backbone == "small":
            backbone += "-" + "-".join(str(w) for w in spec.get("widths", (16, 32, 64)))
        w, h = self.input_size
        return f"simcc/{backbone}/h{spec.get('hidden', 128)}/{w}x{h}"

    def forward(self, model: nn.Module, batch: Batch) -> Outputs:
        out = model(batch.images)
        mask = batch.weight > 0
        heads = {"simcc_x": Head(self.beta * out.simcc_x, batch.target_x, mask=mask, weight=batch.weight,
                                   kind="binned"),
                 "simcc_y": Head(self.beta * out.simcc_y, batch.target_y, mask=mask, weight=batch.weight,
                                   kind="binned")}
        return Outputs(heads=heads, features=dict(out.features), ids=batch.ids)

    def task_loss(self, outputs: Outputs) -> dict[str, Tensor]:
        """RTMPose's KLDiscretLoss, one term per axis named after its head."""
        terms = {}
        for name, head in outputs.heads.items():
            assert head.target is not None, "pose heads carry their label distributions"
            terms[name] = simcc_kl(head.logits, head.target, head.weight)
        return terms

    def head_stage(self, model: nn.Module) -> nn.Module:
        """A copy of `model` with a freshly initialised head and a frozen backbone (BN fixed)."""
        assert isinstance(model, SimCCPose)
        fresh = copy.deepcopy(model)
        fresh.reset_head()
        fresh.freeze_backbone()
        return fresh

    @torch.no_grad()
    def predict(self, model: nn.Module, data: D.PoseSet) -> tuple[np.ndarray, np.ndarray]:
        """(N, K, 2) keypoints in image pixels and (N, K) confidences for every instance."""
        was_training = model.training
        model.eval()
        points, confs = [], []
        for start in range(0, len(data), 256):
            idx = torch.arange(start, min(start + 256, len(data)))
            out = model((data.get_crops(idx).float() / 255).to(self.device))
            locs, conf = simcc_decode(self.beta * out.simcc_x.float(), self.beta * out.simcc_y.float(),
                                      self.split_ratio)
            points.append(data.to_image(locs, idx).numpy())
            confs.append(conf.cpu().double().numpy())
        model.train(was_training)
        k = data.num_keypoints
        return (np.concatenate(points) if points else np.zeros((0, k, 2)),
                np.concatenate(confs) if confs else np.zeros((0, k)))

    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        sets = {"train": self.train_set, "val": self.val_set, "test": self.test_set}
        data = sets[check_split(split, tuple(sets), self.task)]
        points, confs = self.predict(model, data)
        results = keypoint_results(points, confs, data.image_ids)
        return oks_metrics(data.gt_file, results, self.sigmas, data.image_ids)  # type: ignore[return-value]

    def example_input(self) -> Tensor:
        return (self.val_set.get_crops(torch.arange(1)).float() / 255).to(self.device)
