"""Synthetic articulated figures in COCO keypoint format (the embedded smoke and small tiers).

One figure per image: a 2D skeleton with COCO's 17 keypoints and limb structure, drawn as a
filled torso, thick limbs and a head, at a random scale, position and in-plane rotation, with
random joint angles, on a cluttered background. Left limbs are drawn in green hues, right ones
in orange hues (as mmpose draws skeletons), so left and right can be told apart; a figure
faces the camera or turns its back (then its left side is on the image's left and the nose
and eyes are hidden). Depth order is random per limb (in front of or behind the torso) and a
clutter shape may be drawn over the figure; a keypoint covered by another part of the figure
or by clutter is labeled but not visible (COCO v = 1), one outside the image is unlabeled
(v = 0, x = y = 0). The person box is the box of the figure's unoccluded pixels and `area` is
their count (COCO's segmentation area), which OKS uses as the object's scale.

Image i of a split depends only on (seed, split, i): the train, val and test splits are
different figures, drawn from different seeds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from kdbench.adapters.generated import materialise, read_done
from kdbench.adapters.pose.skeleton import COCO_KEYPOINTS, COCO_LIMBS

VERSION = 2  # bump when generation changes: a root made by another version is regenerated
SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}

# parts (ids in the part map; 0 = background or clutter) and the keypoints each may show
_TORSO, _HEAD = 1, 2
_CHAINS = {  # part id of the upper and lower segment, and the keypoints (root, middle, end)
    "left_arm": ((3, 4), (5, 7, 9)), "right_arm": ((5, 6), (6, 8, 10)),
    "left_leg": ((7, 8), (11, 13, 15)), "right_leg": ((9, 10), (12, 14, 16)),
}
_KEYPOINT_PARTS: dict[int, set[int]] = {0: {_HEAD}, 1: {_HEAD}, 2: {_HEAD}, 3: {_HEAD}, 4: {_HEAD}}
for (_upper, _lower), (_root, _mid, _end) in _CHAINS.values():
    _KEYPOINT_PARTS[_root] = {_TORSO, _upper}
    _KEYPOINT_PARTS[_mid] = {_upper, _lower}
    _KEYPOINT_PARTS[_end] = {_lower}
_LEFT_HUE = np.array([40, 200, 60])
_RIGHT_HUE = np.array([240, 130, 20])


def _rot(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


def _pose(rng: np.random.Generator, size: int) -> tuple[np.ndarray, float, bool]:
    """(17, 2) keypoint positions in pixels, the figure's height, and whether it faces us."""
    height = rng.uniform(0.45, 0.85) * size
    facing = bool(rng.random() < 0.75)
    side = 1.0 if facing else -1.0  # +1: the figure's left is on the image's right
    down = np.array([0.0, 1.0])
    kp = np.zeros((17, 2))
    torso, shoulder, hip = 0.30 * height, 0.11 * height, 0.075 * height
    neck = np.array([0.0, -torso / 2])
    pelvis = np.array([0.0, torso / 2])
    lean = _rot(rng.normal(0, 0.15))
    for k, (base, half) in {5: (neck, shoulder), 11: (pelvis, hip)}.items():
        kp[k] = lean @ (base + np.array([side * half, 0]))
        kp[k + 1] = lean @ (base - np.array([side * half, 0]))
    head = lean @ (neck + np.array([0, -0.12 * height]))
    turn = rng.uniform(-0.3, 0.3) * 0.05 * height
    kp[0] = head + np.array([turn, 0.01 * height])
    for k, dx in ((1, 0.03), (2, -0.03), (3, 0.055), (4, -0.055)):
        kp[k] = head + np.array([turn * (k < 3) + side * dx * height, -0.015 * height * (k < 3)])
    lengths = {"arm": (0.17, 0.15), "leg": (0.24, 0.23)}
    for name, (_, (root, mid, end)) in _CHAINS.items():
        upper, lower = (x * height for x in lengths[name.split("_")[1]])
        outward = side * (1 if name.startswith("left") else -1)
        if name.endswith("arm"):
            a1 = outward * rng.uniform(-0.4, 2.6)
            a2 = a1 + outward * rng.uniform(-0.3, 2.0)
        else:
            a1 = outward * rng.uniform(-0.35, 0.9)
            a2 = a1 - outward * rng.uniform(-0.2, 1.4) * (rng.random() < 0.7)
        kp[mid] = kp[root] + lean @ _rot(-a1) @ down * upper
        kp[end] = kp[mid] + lean @ _rot(-a2) @ down * lower
    angle = rng.normal(0, 0.35)
    kp = kp @ _rot(angle).T
    lo, hi = kp.min(0), kp.max(0)
    center = rng.uniform(0.35, 0.65, 2) * size
    kp += center - (lo + hi) / 2
    return kp, height, facing


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    coarse = rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((size, size), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 8))):
        _clutter(draw, rng, size, None)
    return image


def _clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int,
             parts: ImageDraw.ImageDraw | None) -> None:
    x0, y0 = rng.uniform(-0.1, 1.0, 2) * size
    w, h = rng.uniform(0.06, 0.3, 2) * size
    color = tuple(int(c) for c in rng.integers(0, 256, 3))
    shape = int(rng.integers(0, 3))
    for d, fill in ((draw, color), (parts, 0)):
        if d is None:
            continue
        if shape == 0:
            d.rectangle([x0, y0, x0 + w, y0 + h], fill=fill)
        elif shape == 1:
            d.ellipse([x0, y0, x0 + w, y0 + h], fill=fill)
        else:
            d.line([x0, y0, x0 + w, y0 + h], fill=fill, width=max(2, int(size * 0.04)))


def _jitter(rng: np.random.Generator, hue: np.ndarray) -> tuple[int, int, int]:
    c = np.clip(hue + rng.integers(-30, 31, 3), 0, 255)
    return int(c[0]), int(c[1]), int(c[2])


def draw_figure(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One scene: (S, S, 3) uint8 image, (17, 3) COCO keypoints (x, y, v) and (S, S) figure mask."""
    image = _background(rng, size)
    part_map = Image.new("L", (size, size), 0)
    draw, parts = ImageDraw.Draw(image), ImageDraw.Draw(part_map)
    kp, height, facing = _pose(rng, size)
    width = max(2, round(0.055 * height))
    front = {name: bool(rng.random() < 0.5) for name in _CHAINS}
    body = _jitter(rng, np.array([90, 90, 200]))
    skin = _jitter(rng, np.array([230, 190, 160]))

    def limb(name: str) -> None:
        (upper, lower), (root, mid, end) = _CHAINS[name]
        hue = _LEFT_HUE if name.startswith("left") else _RIGHT_HUE
        for pid, (a, b), shade in ((upper, (root, mid), 0), (lower, (mid, end), 40)):
            color = _jitter(rng, np.clip(hue - shade, 0, 255))
            seg = [tuple(kp[a]), tuple(kp[b])]
            for d, fill in ((draw, color), (parts, pid)):
                d.line(seg, fill=fill, width=width)
                r = width / 2
                d.ellipse([kp[b][0] - r, kp[b][1] - r, kp[b][0] + r, kp[b][1] + r], fill=fill)

    for name in _CHAINS:
        if not front[name]:
            limb(name)
    torso = [tuple(kp[i]) for i in (5, 6, 12, 11)]
    for d, fill in ((draw, body), (parts, _TORSO)):
        d.polygon(torso, fill=fill)
    head_center, r = (kp[3] + kp[4]) / 2, 0.075 * height
    for d, fill in ((draw, skin), (parts, _HEAD)):
        d.ellipse([head_center[0] - r, head_center[1] - r, head_center[0] + r, head_center[1] + r], fill=fill)
    dot = max(1.0, 0.018 * height)
    features = [(0, (200, 30, 30)), (1, (20, 120, 20)), (2, (160, 70, 0))] if facing else []
    features += [(3, _jitter(rng, _LEFT_HUE)), (4, _jitter(rng, _RIGHT_HUE))]
    for k, color in features:
        draw.ellipse([kp[k][0] - dot, kp[k][1] - dot, kp[k][0] + dot, kp[k][1] + dot], fill=color)
    for name in _CHAINS:
        if front[name]:
            limb(name)
    if rng.random() < 0.3:
        _clutter(draw, rng, size, parts)
    pid = np.asarray(part_map)
    out = np.zeros((17, 3))
    for k in range(17):
        x, y = kp[k]
        if not (0 <= x < size and 0 <= y < size):
            continue
        shown = pid[int(y), int(x)] in _KEYPOINT_PARTS[k] and (facing or k > 2)
        out[k] = (x, y, 2 if shown else 1)
    return np.asarray(image), out, pid > 0


def _write_split(folder: Path, split: str, n: int, size: int, seed: int) -> None:
    (folder / split).mkdir(parents=True)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for i in range(n):
        rng = np.random.default_rng(np.random.SeedSequence([seed, SPLITS[split], i]))
        for _ in range(100):  # a figure whose unoccluded pixels are gone is drawn again
            pixels, kp, mask = draw_figure(rng, size)
            if mask.any() and (kp[:, 2] > 0).any():
                break
        ys, xs = np.nonzero(mask)
        x0, y0 = float(xs.min()), float(ys.min())
        box = [x0, y0, float(xs.max()) + 1 - x0, float(ys.max()) + 1 - y0]
        file_name = f"{i + 1:06d}.png"
        Image.fromarray(pixels).save(folder / split / file_name)
        images.append({"id": i + 1, "file_name": file_name, "width": size, "height": size})
        annotations.append({
            "id": i + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0, "bbox": box,
            "area": float(mask.sum()), "num_keypoints": int((kp[:, 2] > 0).sum()),
            "keypoints": [round(float(v), 2) for v in kp.reshape(-1)]})
    categories = [{"id": 1, "name": "person", "supercategory": "person",
                   "keypoints": list(COCO_KEYPOINTS),
                   "skeleton": [[a + 1, b + 1] for a, b in COCO_LIMBS]}]
    coco = {"info": {"description": f"kdbench synthetic articulated figures ({split})"},
            "licenses": [], "images": images, "annotations": annotations, "categories": categories}
    (folder / "annotations").mkdir(exist_ok=True)
    (folder / "annotations" / f"person_keypoints_{split}.json").write_text(json.dumps(coco))


def make_figures_dataset(root: Path, n_train: int, n_val: int, n_test: int, size: int = 96, seed: int = 0) -> Path:
    """Generate (once) `root/annotations/person_keypoints_{train,val,test}.json` and
    `root/{train,val,test}/`, one figure per image.

    Written to a temporary folder and renamed into place; `root/DONE` records the parameters,
    and a root made with the same parameters is reused as is, one made with others is replaced.
    """
    root = Path(root)
    params = {"version": VERSION, "n_train": n_train, "n_val": n_val, "n_test": n_test, "size": size,
              "seed": seed}
    if read_done(root) == params:
        return root
    if size < 32 or min(n_train, n_val, n_test) < 1:
        raise ValueError(f"need size ≥ 32 and at least one image per split; got {size}, {n_train}, "
                         f"{n_val}, {n_test}")
    counts = {"train": n_train, "val": n_val, "test": n_test}

    def write(folder: Path) -> None:
        for split, n in counts.items():
            _write_split(folder, split, n, size, seed)

    return materialise(root, params, write)
