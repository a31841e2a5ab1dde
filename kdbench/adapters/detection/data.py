"""Detection data: synthetic shapes scenes (embedded) and COCO-format sets (user's files).

Every set is read through one COCO-format loader. Images become uint8 (3, S, S) tensors resized
to the model's input size S without keeping the aspect ratio (as D-FINE's 640×640 resize does),
so normalised boxes are the same before and after resizing and map back to original pixels by
(W, H). Small sets are held in memory; large ones (COCO 2017) are read on demand through
`DetectionSet.get_images`. No code here downloads anything.
"""

from __future__ import annotations

import importlib.metadata
import json
import warnings
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from kdbench.adapters.generated import materialise, read_done
from kdbench.adapters.splits import coco_subset_file, held_out

COCO_URL = "https://cocodataset.org/#download"
COCO2017_FILES = "train2017.zip, val2017.zip and annotations_trainval2017.zip"

SHAPES: tuple[str, ...] = ("rectangle", "circle", "triangle")  # COCO category ids 1, 2, 3
SHAPES_SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}  # split → seed component
SHAPES_VERSION = 2  # bump when generation changes: a root made by another version is regenerated

PRELOAD_BYTES = 1 << 30  # load_coco_detection keeps images in memory when they fit in this
READ_THREADS = 8


@dataclass
class DetectionSet:
    """Images with their boxes, either preloaded or read from files on demand.

    Attributes:
        size: S, the model's square input size.
        boxes: per image (n_i, 4) float32 cx, cy, w, h normalised to [0, 1] (of the image, and
            equally of the S×S model input, which is the whole image resized).
        labels: per image (n_i,) int64 contiguous class indices in [0, C).
        image_ids: N COCO image ids.
        orig_sizes: (N, 2) int64 original (W, H): a normalised box times (W, H, W, H) is in
            original pixels.
        category_ids: C COCO category ids, indexed by contiguous class.
        category_names: C names, indexed by contiguous class.
        ann_file: the COCO json the set was read from (ground truth for evaluation).
        images: (N, 3, S, S) uint8 when preloaded, else None.
        files: N image paths when read on demand, else None.
    """

    size: int
    boxes: list[Tensor]
    labels: list[Tensor]
    image_ids: list[int]
    orig_sizes: Tensor
    category_ids: list[int]
    category_names: list[str]
    ann_file: Path
    images: Tensor | None = None
    files: list[Path] | None = None

    def __post_init__(self) -> None:
        n = len(self.image_ids)
        if (self.images is None) == (self.files is None):
            raise ValueError("DetectionSet needs exactly one of images (preloaded) and files (lazy)")
        if self.images is not None and tuple(self.images.shape) != (n, 3, self.size, self.size):
            raise ValueError(f"images must be ({n}, 3, {self.size}, {self.size}), got {tuple(self.images.shape)}")
        if self.files is not None and len(self.files) != n:
            raise ValueError(f"{len(self.files)} files for {n} images")
        if len(self.boxes) != n or len(self.labels) != n or tuple(self.orig_sizes.shape) != (n, 2):
            raise ValueError(f"boxes, labels and orig_sizes must have one entry per image ({n})")
        if len(self.category_names) != len(self.category_ids):
            raise ValueError(f"{len(self.category_names)} names for {len(self.category_ids)} categories")

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def get_images(self, idx: Tensor) -> Tensor:
        """(B, 3, S, S) uint8 images at dataset indices `idx` (B,), from memory or from files."""
        if self.images is not None:
            return self.images[idx.cpu()]
        assert self.files is not None
        paths = [self.files[i] for i in idx.tolist()]
        return _read_images(paths, self.size)

    def get_targets(self, idx: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Per image of `idx` (B,): boxes (n_i, 4) normalised cx, cy, w, h and labels (n_i,)."""
        order = idx.tolist()
        return [self.boxes[i] for i in order], [self.labels[i] for i in order]


# --- synthetic shapes ------------------------------------------------------------------------


def _shapes_params(n_train: int, n_val: int, n_test: int, size: int, max_objects: int, seed: int) -> dict[str, Any]:
    return {
        "version": SHAPES_VERSION,
        "skimage": importlib.metadata.version("scikit-image"),  # random_shapes' draws may change between its versions
        "n_train": n_train,
        "n_val": n_val,
        "n_test": n_test,
        "size": size,
        "max_objects": max_objects,
        "seed": seed,
    }



def _draw_scene(
    rng: np.random.Generator, size: int, n_objects: int, min_size: int, max_size: int
) -> tuple[np.ndarray, list[tuple[int, list[int]]]]:
    """One (S, S, 3) uint8 scene of exactly `n_objects` whole shapes, and (category id, COCO box)s.

    `random_shapes` places shapes without overlap but also draws ellipses and may cut a
    triangle's apex at the top edge (its label then starts above row 0). Scenes with either,
    or with fewer shapes than asked, are drawn again from the same generator, so every scene
    holds `n_objects` whole rectangles, circles or triangles (each uniform among the three).
    """
    from skimage.draw import random_shapes

    for _ in range(1000):
        with warnings.catch_warnings():  # "Could not fit any shapes": the scene is drawn again
            warnings.simplefilter("ignore")
            image, labels = random_shapes(
                (size, size),
                max_shapes=n_objects,
                min_shapes=n_objects,
                min_size=min_size,
                max_size=max_size,
                num_channels=3,
                allow_overlap=False,
                rng=rng,
                channel_axis=-1,
            )
        objects = []
        for name, ((r0, r1), (c0, c1)) in labels:
            if name not in SHAPES or min(r0, c0) < 0 or max(r1, c1) > size:
                break
            # Labels are half-open pixel ranges [r0, r1) × [c0, c1): exactly the drawn pixels.
            objects.append((SHAPES.index(name) + 1, [int(c0), int(r0), int(c1 - c0), int(r1 - r0)]))
        else:
            if len(objects) == n_objects:
                return image, objects
    raise RuntimeError(f"could not draw {n_objects} shapes of {min_size}..{max_size} px into {size}×{size}")


def _write_shapes_split(folder: Path, split: str, n: int, size: int, max_objects: int, seed: int) -> None:
    """Write `folder/<split>/NNNNNN.png` and `folder/annotations/instances_<split>.json`."""
    (folder / split).mkdir(parents=True)
    min_size, max_size = max(4, size // 6), size // 2  # 10 and 32 px at S = 64
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for i in range(n):
        # One generator per image, from (seed, split, index): any image is reproducible alone.
        rng = np.random.default_rng(np.random.SeedSequence([seed, SHAPES_SPLITS[split], i]))
        n_objects = int(rng.integers(1, max_objects + 1))
        pixels, objects = _draw_scene(rng, size, n_objects, min_size, max_size)  # (S, S, 3)
        file_name = f"{i + 1:06d}.png"
        Image.fromarray(pixels).save(folder / split / file_name)
        images.append({"id": i + 1, "file_name": file_name, "width": size, "height": size})
        for category_id, box in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": category_id,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
    categories = [{"id": k + 1, "name": name, "supercategory": "shape"} for k, name in enumerate(SHAPES)]
    coco = {
        "info": {"description": f"kdbench synthetic shapes ({split}), skimage.draw.random_shapes"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    (folder / "annotations").mkdir(exist_ok=True)
    (folder / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))


def make_shapes_dataset(
    root: Path, n_train: int, n_val: int, n_test: int, size: int = 64, max_objects: int = 4, seed: int = 0
) -> Path:
    """Generate (once) synthetic scenes of rectangles, circles and triangles in COCO format.

    Each image holds 1..`max_objects` non-overlapping shapes from `skimage.draw.random_shapes`
    in random colours on white, 10..32 px at S = 64 (S/6..S/2). Category ids 1, 2, 3 are
    rectangle, circle, triangle; boxes tightly cover the drawn pixels; `area` is the box's.
    Triangles are about 15% rarer than the others (scenes where one would poke above the top
    edge are drawn again), and 1..`max_objects` shapes are equally likely per image.
    Image i of a split depends only on (seed, split, i): the three splits are different scenes
    (drawn from different seeds). Written to a temporary folder and
    renamed into place; `root/DONE` records the parameters, and a root made with the same
    parameters is reused as is, one made with others is replaced.

    Args:
        root: output folder: `annotations/instances_{train,val,test}.json`, `train/`, `val/`,
            `test/`, `DONE`.
        n_train: training images.
        n_val: validation images.
        n_test: test images.
        size: image side S in pixels.
        max_objects: most shapes in one image (at least 1).
        seed: seed of the whole set.

    Returns:
        `root`.
    """
    root = Path(root)
    params = _shapes_params(n_train, n_val, n_test, size, max_objects, seed)
    if read_done(root) == params:
        return root
    if max_objects < 1 or size < 16 or min(n_train, n_val, n_test) < 0:
        raise ValueError(f"need n ≥ 0, max_objects ≥ 1, size ≥ 16; got {n_train}, {n_val}, {n_test}, "
                         f"{max_objects}, {size}")
    counts = {"train": n_train, "val": n_val, "test": n_test}

    def write(folder: Path) -> None:
        for split, n in counts.items():
            _write_shapes_split(folder, split, n, size, max_objects, seed)

    return materialise(root, params, write)


# --- COCO-format loading ---------------------------------------------------------------------


def _missing(path: Path, what: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{what} {path} not found: a COCO-format set needs annotations/instances_<split>.json and "
        f"<split>/ images under --data-root (COCO 2017: download {COCO2017_FILES} from {COCO_URL} "
        f"and unzip them into --data-root)"
    )


def _read_image(path: Path, size: int) -> np.ndarray:
    """(S, S, 3) uint8 RGB: the whole image resized bilinearly (aspect ratio not kept)."""
    with Image.open(path) as im:
        rgb = im.convert("RGB")
        if rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(rgb)


def _read_images(paths: list[Path], size: int) -> Tensor:
    """(B, 3, S, S) uint8, decoded by a few threads (PIL releases the GIL while decoding)."""
    if not paths:
        return torch.empty(0, 3, size, size, dtype=torch.uint8)
    with ThreadPoolExecutor(min(READ_THREADS, len(paths))) as pool:
        arrays = list(pool.map(lambda p: _read_image(p, size), paths))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # (B, S, S, 3) → (B, 3, S, S)


def _image_targets(
    anns: list[dict[str, Any]], width: int, height: int, label_of: dict[int, int]
) -> tuple[Tensor, Tensor]:
    """Non-crowd boxes clipped to the image, degenerate ones dropped (as D-FINE does).

    Returns:
        (n, 4) float32 normalised cx, cy, w, h and (n,) int64 contiguous labels.
    """
    anns = [a for a in anns if not a.get("iscrowd", 0)]
    if not anns:
        return torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)
    xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float64).reshape(-1, 4)  # (n, 4) pixels
    wh = torch.tensor([width, height, width, height], dtype=torch.float64)
    xyxy = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
    xyxy = torch.minimum(xyxy.clamp(min=0), wh) / wh  # (n, 4) normalised x0, y0, x1, y1
    keep = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
    xyxy = xyxy[keep]
    cxcywh = torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], 1)
    labels = torch.tensor([label_of[a["category_id"]] for a in anns], dtype=torch.long)[keep]
    return cxcywh.float(), labels


def load_coco_detection(
    ann_file: Path,
    image_dir: Path,
    size: int,
    limit: int | None = None,
    keep_empty: bool = True,
    preload: bool | None = None,
    image_ids: Collection[int] | None = None,
    coco: dict[str, Any] | None = None,
) -> DetectionSet:
    """Read a COCO-format instances json and its images, resized to S×S.

    Crowd annotations are left out of the training targets (they stay in `ann_file` for
    evaluation, where COCOeval ignores detections on them). Classes are the json's categories in
    ascending id order. Images keep the json's order.

    Args:
        ann_file: the instances json (COCO "images", "annotations", "categories").
        image_dir: folder of the images named by their `file_name`.
        size: S, the model's square input size.
        limit: keep only the first `limit` images (after dropping empty ones).
        keep_empty: keep images without (non-crowd) boxes.
        preload: hold all images in memory (True) or read them on demand (False); None holds
            them when they take at most PRELOAD_BYTES.
        image_ids: keep only these images (default: all).
        coco: the json already parsed (else it is read from `ann_file`).

    Returns:
        The set, with `ann_file` for evaluation.

    Raises:
        FileNotFoundError: the json, the image folder or an image is missing (one line, naming it).
        ValueError: the json is not COCO instances format.
    """
    ann_file, image_dir = Path(ann_file), Path(image_dir)
    if coco is None:
        coco = read_coco(ann_file)
    if not image_dir.is_dir():
        raise _missing(image_dir, "COCO image folder")
    wanted = None if image_ids is None else {int(i) for i in image_ids}
    categories = sorted(coco["categories"], key=lambda c: c["id"])
    label_of = {c["id"]: k for k, c in enumerate(categories)}
    by_image: dict[int, list[dict[str, Any]]] = {im["id"]: [] for im in coco["images"]}
    for ann in coco["annotations"]:
        if ann["image_id"] not in by_image:
            raise ValueError(f"{ann_file}: annotation {ann.get('id')} refers to unknown image {ann['image_id']}")
        by_image[ann["image_id"]].append(ann)
    infos, boxes, labels = [], [], []
    for im in coco["images"]:
        if wanted is not None and int(im["id"]) not in wanted:
            continue
        b, lab = _image_targets(by_image[im["id"]], im["width"], im["height"], label_of)
        if keep_empty or len(lab):
            infos.append(im)
            boxes.append(b)
            labels.append(lab)
        if limit is not None and len(infos) >= limit:
            break
    files = [image_dir / im["file_name"] for im in infos]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise _missing(missing[0], f"image ({len(missing)} of {len(files)} missing)")
    if preload is None:
        preload = len(files) * 3 * size * size <= PRELOAD_BYTES
    return DetectionSet(
        size=size,
        boxes=boxes,
        labels=labels,
        image_ids=[int(im["id"]) for im in infos],
        orig_sizes=torch.tensor([[im["width"], im["height"]] for im in infos], dtype=torch.long).reshape(-1, 2),
        category_ids=[int(c["id"]) for c in categories],
        category_names=[str(c["name"]) for c in categories],
        ann_file=ann_file,
        images=_read_images(files, size) if preload else None,
        files=None if preload else files,
    )


def read_coco(ann_file: Path) -> dict[str, Any]:
    """A COCO instances json, checked for its three lists.

    Raises:
        FileNotFoundError: it is missing (one line, naming it and the source).
        ValueError: it is not COCO instances format.
    """
    ann_file = Path(ann_file)
    if not ann_file.is_file():
        raise _missing(ann_file, "COCO annotations")
    coco = json.loads(ann_file.read_text())
    if not isinstance(coco, dict) or not all(k in coco for k in ("images", "annotations", "categories")):
        raise ValueError(f"{ann_file}: not a COCO instances json (needs images, annotations, categories)")
    return coco


def load_coco2017_splits(
    root: Path,
    size: int,
    val_images: int,
    split_seed: int,
    gt_dir: Path,
    limits: tuple[int | None, int | None, int | None] = (None, None, None),
) -> tuple[DetectionSet, DetectionSet, DetectionSet]:
    """COCO 2017 detection as train / val / test: val = `val_images` train2017 images held out
    (drawn with `split_seed` from all its image ids), train = the other train2017 images,
    test = val2017 (the split the literature reports).

    The val split's ground truth is a json of its images alone, written once into `gt_dir`.

    Args:
        root: the data root (--data-root).
        size: S (640 for D-FINE).
        val_images: train2017 images held out for validation.
        split_seed: seed of the held-out draw.
        gt_dir: where the val ground truth is written.
        limits: keep only the first this many images of train, val, test (None: all).
    """
    root = Path(root)
    ann_file = root / "annotations" / "instances_train2017.json"
    coco = read_coco(ann_file)
    val_ids = held_out([im["id"] for im in coco["images"]], val_images, split_seed, "train2017 images")
    train_ids = {int(im["id"]) for im in coco["images"]} - set(val_ids)
    val_file = coco_subset_file(coco, ann_file, val_ids, gt_dir)
    train = load_coco_detection(ann_file, root / "train2017", size, limits[0], image_ids=train_ids, coco=coco)
    val = load_coco_detection(val_file, root / "train2017", size, limits[1])
    return train, val, load_coco2017(root, "val", size, limits[2])


def load_coco2017(
    root: Path, split: str, size: int, limit: int | None = None, preload: bool | None = None
) -> DetectionSet:
    """COCO 2017 detection: `root/annotations/instances_{split}2017.json` and `root/{split}2017/`.

    Args:
        root: the data root (--data-root).
        split: "train" or "val".
        size: S (640 for D-FINE).
        limit: keep only the first `limit` images.
        preload: see `load_coco_detection` (None: lazy for the full splits).
    """
    if split not in ("train", "val"):
        raise ValueError(f"unknown COCO 2017 split {split!r}; valid: train, val")
    root = Path(root)
    return load_coco_detection(
        root / "annotations" / f"instances_{split}2017.json", root / f"{split}2017", size, limit, preload=preload
    )


def load_shapes(root: Path, split: str, size: int | None = None) -> DetectionSet:
    """A split written by `make_shapes_dataset`, preloaded (S defaults to the images' size)."""
    if split not in SHAPES_SPLITS:
        raise ValueError(f"unknown shapes split {split!r}; valid: {', '.join(SHAPES_SPLITS)}")
    root = Path(root)
    done = read_done(root)
    side = size or (int(done["size"]) if done else 64)
    return load_coco_detection(root / "annotations" / f"instances_{split}.json", root / split, side, preload=True)


# --- augmentation ----------------------------------------------------------------------------


def hflip_batch(
    images: Tensor, boxes: list[Tensor], generator: torch.Generator, p: float = 0.5
) -> tuple[Tensor, list[Tensor]]:
    """Flip each image horizontally with probability p; deterministic given the generator's state.

    Args:
        images: (B, 3, S, S) batch (any dtype).
        boxes: per image (n_i, 4) normalised cx, cy, w, h.
        generator: source of randomness; its device is where the coin flips are drawn.
        p: flip probability.

    Returns:
        The (B, 3, S, S) batch and per-image boxes with cx → 1 − cx where flipped (new tensors).
    """
    flip = torch.rand(images.shape[0], generator=generator, device=generator.device) < p  # (B,)
    flipped = torch.where(flip.to(images.device)[:, None, None, None], images.flip(-1), images)
    out = []
    for b, f in zip(boxes, flip.tolist(), strict=True):
        b = b.clone()
        if f:
            b[:, 0] = 1 - b[:, 0]
        out.append(b)
    return flipped, out
