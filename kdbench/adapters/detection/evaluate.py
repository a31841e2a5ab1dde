"""COCO box AP through pycocotools, and D-FINE-style post-processing into COCO results."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchvision.ops import box_convert

from kdbench.adapters.coco import named_stats

#: COCOeval's stats[0..5] (IoU .50:.95 over all areas, IoU .50, IoU .75, small, medium, large)
METRIC_NAMES: tuple[str, ...] = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")


def _quiet() -> contextlib.redirect_stdout[io.StringIO]:
    return contextlib.redirect_stdout(io.StringIO())  # pycocotools prints progress


def coco_detection_metrics(
    ann_file: Path, detections: list[dict[str, Any]], image_ids: list[int] | None = None
) -> dict[str, float | None]:
    """COCO box AP (pycocotools `COCOeval`, iouType "bbox", up to 100 detections per image).

    Args:
        ann_file: the ground-truth COCO instances json.
        detections: COCO results: {"image_id", "category_id", "bbox": [x, y, w, h] in original
            pixels, "score"}; not modified.
        image_ids: evaluate on these images only (default: every image of `ann_file`).

    Returns:
        {"ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large"} as fractions in [0, 1];
        None where undefined (no ground truth of that area range among the images). No
        detections give 0 wherever ground truth exists.

    Raises:
        ValueError: a detection names an image that is not in `ann_file`.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with _quiet():
        gt = COCO(str(ann_file))
    unknown = {int(d["image_id"]) for d in detections} - set(gt.getImgIds())
    if unknown:
        raise ValueError(f"detections for {len(unknown)} image ids not in {ann_file}, e.g. {min(unknown)}")
    if detections:
        with _quiet():
            dt = gt.loadRes([dict(d) for d in detections])  # loadRes adds keys to the dicts it gets
    else:  # loadRes fails on an empty list: an empty result set instead
        dt = COCO()
        dt.dataset = {
            "images": list(gt.dataset["images"]),
            "categories": list(gt.dataset["categories"]),
            "annotations": [],
        }
        with _quiet():
            dt.createIndex()
    evaluator = COCOeval(gt, dt, iouType="bbox")
    if image_ids is not None:
        evaluator.params.imgIds = sorted(int(i) for i in image_ids)
    with _quiet():
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return named_stats(evaluator.stats, {name: i for i, name in enumerate(METRIC_NAMES)})


@torch.no_grad()
def to_coco_results(
    scores: Tensor,
    boxes: Tensor,
    image_ids: list[int],
    category_ids: list[int],
    orig_sizes: Tensor,
    top_k: int = 100,
) -> list[dict[str, Any]]:
    """Detections in COCO results format, picked as D-FINE's PostProcessor does.

    Per image the `top_k` highest of the flattened Q×C scores are kept, each a (query, class)
    pair, so one query may yield several classes. Boxes go to x0, y0, x1, y1 in original pixels,
    are clipped to the image, then written as [x, y, w, h].

    Args:
        scores: (B, Q, C) sigmoid class probabilities.
        boxes: (B, Q, 4) normalised cx, cy, w, h.
        image_ids: B COCO image ids.
        category_ids: C COCO category ids, indexed by contiguous class.
        orig_sizes: (B, 2) original (W, H) in pixels.
        top_k: detections per image (at most Q·C).

    Returns:
        B·min(top_k, Q·C) dicts {"image_id", "category_id", "bbox", "score"}.
    """
    b, q, c = scores.shape
    if boxes.shape != (b, q, 4) or len(image_ids) != b or len(category_ids) != c or orig_sizes.shape != (b, 2):
        raise ValueError(
            f"to_coco_results: scores {tuple(scores.shape)}, boxes {tuple(boxes.shape)}, {len(image_ids)} "
            f"image ids, {len(category_ids)} category ids, orig_sizes {tuple(orig_sizes.shape)} do not agree"
        )
    k = min(top_k, q * c)
    top, flat = scores.float().flatten(1).topk(k, dim=1)  # (B, k) scores and indices into Q·C
    query, label = flat // c, flat % c  # (B, k)
    wh = orig_sizes.to(boxes.device, torch.float32).repeat(1, 2)[:, None, :]  # (B, 1, 4) W, H, W, H
    xyxy = box_convert(boxes.float(), "cxcywh", "xyxy").clamp(0, 1) * wh  # (B, Q, 4) clipped, pixels
    picked = xyxy.gather(1, query[..., None].expand(b, k, 4))  # (B, k, 4)
    xywh = torch.cat([picked[..., :2], picked[..., 2:] - picked[..., :2]], -1)  # (B, k, 4)
    cats = torch.tensor(category_ids, device=label.device)[label]  # (B, k)
    results = []
    for i in range(b):
        for box, cat, score in zip(xywh[i].tolist(), cats[i].tolist(), top[i].tolist(), strict=True):
            results.append({"image_id": int(image_ids[i]), "category_id": cat, "bbox": box, "score": score})
    return results
