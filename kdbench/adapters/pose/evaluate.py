"""OKS AP through pycocotools (COCOeval, iouType "keypoints") with the dataset's sigmas.

COCO-WholeBody is scored over all 133 keypoints with its sigmas passed in (xtcocotools, which
the official whole-body evaluation uses, needs numpy < 2); the ground truth is the whole-body
json with its parts concatenated (`data.wholebody_gt`).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kdbench.adapters.coco import named_stats

#: COCOeval's keypoint stats[0], [1], [2] and [5] (AP .50:.95, AP .50, AP .75, AR .50:.95)
METRIC_NAMES: dict[str, int] = {"ap": 0, "ap50": 1, "ap75": 2, "ar": 5}


def oks_metrics(gt_file: Path, results: list[dict[str, Any]], sigmas: Sequence[float],
                image_ids: list[int] | None = None) -> dict[str, float | None]:
    """OKS AP, AP50, AP75 and AR of keypoint results against a COCO keypoint json.

    Args:
        gt_file: ground truth with `keypoints` of len 3·K per person.
        results: {"image_id", "category_id", "keypoints": [x, y, score]·K, "score"}; not modified.
        sigmas: K OKS sigmas (set on `params.kpt_oks_sigmas`).
        image_ids: evaluate on these images only (default: all of `gt_file`).

    Returns:
        {"ap", "ap50", "ap75", "ar"} as fractions; None where undefined. No results give 0.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        gt = COCO(str(gt_file))
        if results:
            dt = gt.loadRes([dict(r) for r in results])
        else:
            return {name: 0.0 for name in METRIC_NAMES}
        evaluator = COCOeval(gt, dt, iouType="keypoints")
        evaluator.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
        if image_ids is not None:
            evaluator.params.imgIds = sorted(set(int(i) for i in image_ids))
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return named_stats(evaluator.stats, METRIC_NAMES)


def keypoint_results(image_keypoints: np.ndarray, confidences: np.ndarray, image_ids: list[int],
                     box_scores: np.ndarray | None = None) -> list[dict[str, Any]]:
    """COCO keypoint results, one per instance.

    The instance score is the box score (1 for ground-truth boxes) times the mean keypoint
    confidence (mmpose's `bbox_keypoint` rescoring, here over all keypoints).

    Args:
        image_keypoints: (N, K, 2) predicted keypoints in image pixels.
        confidences: (N, K) in [0, 1].
        image_ids: N COCO image ids.
        box_scores: (N,) or None (all 1).
    """
    n = len(image_ids)
    scores = confidences.mean(1) * (np.ones(n) if box_scores is None else box_scores)
    triples = np.concatenate([image_keypoints, confidences[..., None]], -1).reshape(n, -1)
    return [{"image_id": int(i), "category_id": 1, "keypoints": [float(v) for v in kp],
             "score": float(s)} for i, kp, s in zip(image_ids, triples, scores, strict=True)]
