"""Top-down pose data: COCO-format keypoint sets read into person crops.

Every set (the synthetic figures, COCO keypoints, COCO-WholeBody) is read through one loader.
Each non-crowd person with at least one labeled keypoint is an instance; its box, padded by
1.25 and widened or heightened to the input's aspect ratio (mmpose's GetBBoxCenterScale and
TopdownAffine without rotation), is cropped and resized to the model's input (W, H). A
keypoint maps into the crop as (p − (c − s/2))·(W, H)/s and back as q·s/(W, H) + c − s/2, with
c the box centre and s the padded box size (mmpose's decoding convention). COCO-WholeBody's
parts are concatenated into 133 keypoints (body, foot, face, left hand, right hand). Small
sets are cropped once and held in memory; large ones are cropped on demand. No code here
downloads anything.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from kdbench.adapters.pose.skeleton import WHOLEBODY_PARTS
from kdbench.adapters.splits import coco_subset_file, held_out

PADDING = 1.25
PRELOAD_BYTES = 1 << 30
READ_THREADS = 8


@dataclass
class PoseSet:
    """Person instances of a COCO-format keypoint set, as top-down crops.

    Attributes:
        input_size: (W, H) of the crops.
        keypoints: (N, K, 3) float32: x, y in crop pixels, and COCO visibility v ∈ {0, 1, 2}.
        centers: (N, 2) float64 box centres in image pixels.
        scales: (N, 2) float64 padded box sizes (w, h) in image pixels.
        image_ids: N COCO image ids (one per instance; an image may hold several).
        ann_ids: N COCO annotation ids.
        ann_file: the json the set was read from.
        gt_file: the ground truth for OKS evaluation (the whole-body json rewritten with 133
            concatenated keypoints; else `ann_file`).
        files: N image paths.
        crops: (N, 3, H, W) uint8 when preloaded, else None.
    """

    input_size: tuple[int, int]
    keypoints: Tensor
    centers: Tensor
    scales: Tensor
    image_ids: list[int]
    ann_ids: list[int]
    ann_file: Path
    gt_file: Path
    files: list[Path]
    crops: Tensor | None = None

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def num_keypoints(self) -> int:
        return int(self.keypoints.shape[1])

    def get_crops(self, idx: Tensor) -> Tensor:
        """(B, 3, H, W) uint8 crops of instances `idx` (B,)."""
        if self.crops is not None:
            return self.crops[idx.cpu()]
        items = idx.tolist()
        return _crop_many([(self.files[i], self.centers[i], self.scales[i]) for i in items], self.input_size)

    def to_image(self, crop_xy: Tensor, idx: Tensor) -> Tensor:
        """(B, K, 2) crop coordinates of instances `idx` → image pixels (float64)."""
        w, h = self.input_size
        size = torch.tensor([w, h], dtype=torch.float64)
        s, c = self.scales[idx.cpu()][:, None], self.centers[idx.cpu()][:, None]
        return crop_xy.double().cpu() * s / size + c - s / 2


def center_scale(
    box: list[float], input_size: tuple[int, int], padding: float = PADDING
) -> tuple[np.ndarray, np.ndarray]:
    """A COCO box [x, y, w, h] → centre (2,) and padded size (2,) with the input's aspect ratio."""
    x, y, w, h = box
    center = np.array([x + w / 2, y + h / 2])
    aspect = input_size[0] / input_size[1]
    w, h = w * padding, h * padding
    if w > aspect * h:
        h = w / aspect
    else:
        w = h * aspect
    return center, np.array([w, h])


def _crop(
    path: Path, center: Tensor | np.ndarray, scale: Tensor | np.ndarray, input_size: tuple[int, int]
) -> np.ndarray:
    """(H, W, 3) uint8: the region centre ± scale/2 of the image, resized bilinearly (zeros outside)."""
    w, h = input_size
    cx, cy = float(center[0]), float(center[1])
    sw, sh = float(scale[0]), float(scale[1])
    with Image.open(path) as im:
        rgb = im.convert("RGB")
        # output pixel (u, v) reads input (u·sw/W + x0, v·sh/H + y0)
        out = rgb.transform((w, h), Image.Transform.AFFINE,
                            (sw / w, 0, cx - sw / 2, 0, sh / h, cy - sh / 2),
                            resample=Image.Resampling.BILINEAR)
    return np.asarray(out)


def _crop_many(items: list[tuple[Path, Any, Any]], input_size: tuple[int, int]) -> Tensor:
    w, h = input_size
    if not items:
        return torch.empty(0, 3, h, w, dtype=torch.uint8)
    with ThreadPoolExecutor(min(READ_THREADS, len(items))) as pool:
        arrays = list(pool.map(lambda it: _crop(it[0], it[1], it[2], input_size), items))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # (B, H, W, 3) → (B, 3, H, W)


def _keypoints(ann: dict[str, Any], wholebody: bool) -> np.ndarray:
    """(K, 3) x, y, v of one annotation (whole-body: the five parts concatenated)."""
    if not wholebody:
        return np.asarray(ann["keypoints"], dtype=np.float64).reshape(-1, 3)
    parts = [np.asarray(ann.get(name) or [0.0] * 3 * n, dtype=np.float64).reshape(n, 3)
             for name, n in WHOLEBODY_PARTS]
    kp = np.concatenate(parts)
    kp[:, 2] = np.where(kp[:, 2] > 0, np.maximum(kp[:, 2], 1), 0)  # whole-body parts use v ∈ {0, 1, 2}
    return kp


def wholebody_gt(ann_file: Path, out: Path) -> Path:
    """A copy of a COCO-WholeBody json whose `keypoints` hold all 133 keypoints and whose
    `num_keypoints` counts the labeled ones, so pycocotools' OKS covers the whole body."""
    coco = json.loads(Path(ann_file).read_text())
    for ann in coco["annotations"]:
        kp = _keypoints(ann, True)
        ann["keypoints"] = [round(float(v), 3) for v in kp.reshape(-1)]
        ann["num_keypoints"] = int((kp[:, 2] > 0).sum())
        for name, _ in WHOLEBODY_PARTS[1:]:
            ann.pop(name, None)
    for cat in coco["categories"]:
        cat["keypoints"] = [f"kp{i}" for i in range(133)]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(coco))
    return out


def _usable(ann: dict[str, Any], wholebody: bool) -> bool:
    """A non-crowd person with a positive box and at least one labeled keypoint: an instance."""
    if ann.get("iscrowd", 0) or "keypoints" not in ann or ann["bbox"][2] <= 0 or ann["bbox"][3] <= 0:
        return False
    return bool((_keypoints(ann, wholebody)[:, 2] > 0).any())


def read_keypoints_json(ann_file: Path) -> dict[str, Any]:
    """A COCO keypoint json, checked for its lists; FileNotFoundError/ValueError name the file."""
    ann_file = Path(ann_file)
    if not ann_file.is_file():
        raise FileNotFoundError(f"COCO keypoint annotations {ann_file} not found")
    coco = json.loads(ann_file.read_text())
    if not isinstance(coco, dict) or not all(k in coco for k in ("images", "annotations")):
        raise ValueError(f"{ann_file}: not a COCO keypoint json (needs images and annotations)")
    return coco


def load_coco_keypoint_splits(
    train_ann: Path,
    train_images: Path,
    test_ann: Path,
    test_images: Path,
    input_size: tuple[int, int],
    val_images: int,
    split_seed: int,
    gt_dir: Path,
    wholebody: bool = False,
    limits: tuple[int | None, int | None, int | None] = (None, None, None),
) -> tuple[PoseSet, PoseSet, PoseSet]:
    """A COCO-format keypoint set as train / val / test: val = the persons of `val_images` images
    of `train_ann` that hold at least one instance (drawn with `split_seed`), train = the persons
    of its other images, test = `test_ann` (COCO: val2017, the split the papers report).

    The val split's ground truth is a json of its images alone, written once into `gt_dir`.

    Args:
        train_ann, train_images: the training json (train2017) and its image folder.
        test_ann, test_images: the test json (val2017) and its image folder.
        input_size: (W, H) of the crops.
        val_images: images of `train_ann` held out for validation.
        split_seed: seed of the held-out draw.
        gt_dir: where the val ground truth (and whole-body ground truths) are written.
        wholebody: read COCO-WholeBody's five parts as 133 keypoints.
        limits: keep only the first this many instances of train, val, test (None: all).
    """
    coco = read_keypoints_json(train_ann)
    with_persons = {int(a["image_id"]) for a in coco["annotations"] if _usable(a, wholebody)}
    val_ids = held_out(sorted(with_persons), val_images, split_seed, "training images with persons")
    val_file = coco_subset_file(coco, Path(train_ann), val_ids, gt_dir)
    train_ids = {int(im["id"]) for im in coco["images"]} - set(val_ids)
    common: dict[str, Any] = {"input_size": input_size, "wholebody": wholebody, "gt_dir": gt_dir}
    return (load_coco_keypoints(train_ann, train_images, limit=limits[0], image_ids=train_ids, coco=coco, **common),
            load_coco_keypoints(val_file, train_images, limit=limits[1], **common),
            load_coco_keypoints(test_ann, test_images, limit=limits[2], **common))


def load_coco_keypoints(
    ann_file: Path,
    image_dir: Path,
    input_size: tuple[int, int],
    wholebody: bool = False,
    limit: int | None = None,
    preload: bool | None = None,
    gt_dir: Path | None = None,
    image_ids: Collection[int] | None = None,
    coco: dict[str, Any] | None = None,
) -> PoseSet:
    """Read a COCO keypoint (or COCO-WholeBody) json and crop its persons.

    Args:
        ann_file: person keypoints json ("images", "annotations" with "keypoints", "bbox").
        image_dir: folder of the images named by their `file_name`.
        input_size: (W, H) of the crops.
        wholebody: read COCO-WholeBody's five parts as 133 keypoints.
        limit: keep only the first `limit` instances.
        preload: crop everything now (True) or on demand (False); None: now when the crops take
            at most PRELOAD_BYTES.
        gt_dir: where the whole-body ground truth with 133 keypoints is written (default: beside
            `ann_file`'s name in the system's temporary folder).
        image_ids: keep only the persons of these images (default: all).
        coco: the json already parsed (else it is read from `ann_file`).

    Raises:
        FileNotFoundError: the json, the folder or an image is missing (one line, naming it).
        ValueError: the json is not COCO keypoint format.
    """
    ann_file, image_dir = Path(ann_file), Path(image_dir)
    if coco is None:
        coco = read_keypoints_json(ann_file)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"COCO image folder {image_dir} not found")
    wanted = None if image_ids is None else {int(i) for i in image_ids}
    images = {im["id"]: im for im in coco["images"]}
    kps, centers, scales, instance_images, ann_ids, files = [], [], [], [], [], []
    for ann in coco["annotations"]:
        if (wanted is not None and int(ann["image_id"]) not in wanted) or not _usable(ann, wholebody):
            continue
        kp = _keypoints(ann, wholebody)
        if ann["image_id"] not in images:
            raise ValueError(f"{ann_file}: annotation {ann.get('id')} refers to unknown image {ann['image_id']}")
        center, scale = center_scale(ann["bbox"], input_size)
        crop_kp = kp.copy()
        crop_kp[:, :2] = (kp[:, :2] - (center - scale / 2)) * np.array(input_size) / scale
        crop_kp[kp[:, 2] == 0, :2] = 0
        kps.append(crop_kp)
        centers.append(center)
        scales.append(scale)
        instance_images.append(int(ann["image_id"]))
        ann_ids.append(int(ann["id"]))
        files.append(image_dir / images[ann["image_id"]]["file_name"])
        if limit is not None and len(kps) >= limit:
            break
    missing = sorted({str(f) for f in files if not f.is_file()})
    if missing:
        raise FileNotFoundError(f"image {missing[0]} not found ({len(missing)} of {len(set(files))} missing)")
    k = kps[0].shape[0] if kps else (133 if wholebody else 17)
    gt_file = ann_file
    if wholebody:
        import hashlib
        import tempfile

        digest = hashlib.sha256(str(ann_file.resolve()).encode()).hexdigest()[:12]
        folder = gt_dir or Path(tempfile.gettempdir()) / "kdbench-wholebody-gt"
        gt_file = wholebody_gt(ann_file, folder / f"{ann_file.stem}-{digest}-133.json")
    w, h = input_size
    data = PoseSet(
        input_size=input_size,
        keypoints=torch.from_numpy(np.stack(kps) if kps else np.zeros((0, k, 3))).float(),
        centers=torch.from_numpy(np.stack(centers) if centers else np.zeros((0, 2))),
        scales=torch.from_numpy(np.stack(scales) if scales else np.zeros((0, 2))),
        image_ids=instance_images, ann_ids=ann_ids, ann_file=ann_file, gt_file=gt_file, files=files)
    if preload is None:
        preload = len(files) * 3 * w * h <= PRELOAD_BYTES
    if preload:
        data.crops = _crop_many(list(zip(files, data.centers, data.scales, strict=True)), input_size)
    return data


def hflip(crops: Tensor, keypoints: Tensor, flip_index: list[int], flip: Tensor) -> tuple[Tensor, Tensor]:
    """Mirror the crops where `flip` (B,) is True: x → W − 1 − x and left/right swapped (mmpose).

    Args:
        crops: (B, 3, H, W).
        keypoints: (B, K, 3) crop x, y and visibility.
        flip_index: each keypoint's mirror keypoint.
        flip: (B,) bool.
    """
    w = crops.shape[-1]
    mirrored = keypoints[:, flip_index].clone()
    mirrored[..., 0] = torch.where(mirrored[..., 2] > 0, w - 1 - mirrored[..., 0], mirrored[..., 0])
    out_kp = torch.where(flip[:, None, None], mirrored, keypoints)
    out = torch.where(flip[:, None, None, None], crops.flip(-1), crops)
    return out, out_kp
