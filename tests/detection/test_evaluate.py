"""Golden numbers for COCO box AP and the D-FINE-style post-processing into COCO results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from kdbench.adapters.detection.evaluate import METRIC_NAMES, coco_detection_metrics, to_coco_results

# Two 200×200 images, three boxes: one small (< 32² px), one medium, one large (> 96² px).
GT_BOXES: list[tuple[int, int, list[float]]] = [  # (image id, category id, [x, y, w, h])
    (1, 1, [10.0, 10.0, 20.0, 20.0]),  # area 400: small
    (1, 2, [60.0, 50.0, 40.0, 60.0]),  # area 2,400: medium
    (2, 1, [20.0, 30.0, 120.0, 100.0]),  # area 12,000: large
]


@pytest.fixture
def gt_file(tmp_path: Path) -> Path:
    coco = {
        "images": [{"id": i, "file_name": f"{i}.png", "width": 200, "height": 200} for i in (1, 2)],
        "annotations": [
            {"id": k + 1, "image_id": im, "category_id": cat, "bbox": box, "area": box[2] * box[3], "iscrowd": 0}
            for k, (im, cat, box) in enumerate(GT_BOXES)
        ],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(coco))
    return path


def _detections(shift: float = 0.0) -> list[dict[str, Any]]:
    """The ground truth, score 1, each box moved right by `shift` × its width."""
    return [
        {"image_id": im, "category_id": cat, "bbox": [x + shift * w, y, w, h], "score": 1.0}
        for im, cat, (x, y, w, h) in GT_BOXES
    ]


def test_perfect_detections_give_ap_one(gt_file: Path) -> None:
    metrics = coco_detection_metrics(gt_file, _detections())
    assert metrics == pytest.approx({name: 1.0 for name in METRIC_NAMES}, abs=1e-12)  # summation error only


def test_iou_of_exactly_0_6(gt_file: Path) -> None:
    # A w×h box moved right by w/4: overlap (3w/4)·h, union (5w/4)·h, IoU = 3/5 = 0.6 exactly.
    dets = _detections(shift=0.25)
    metrics = coco_detection_metrics(gt_file, dets)
    assert metrics["ap50"] == 1.0
    assert metrics["ap75"] == 0.0
    # Matched at IoU thresholds .50, .55 and .60 (a match needs IoU ≥ threshold, and 75/125 is
    # the same double as COCOeval's np.linspace(.5, .95, 10)[2]), missed at the 7 others: AP = 3/10.
    assert metrics["ap"] == pytest.approx(0.3, abs=1e-12)
    assert dets == _detections(shift=0.25)  # the caller's dicts are left alone


def test_no_detections_give_zero(gt_file: Path) -> None:
    metrics = coco_detection_metrics(gt_file, [])
    assert metrics == {name: 0.0 for name in METRIC_NAMES}


def test_image_ids_restrict_and_undefined_is_none(gt_file: Path) -> None:
    # Image 1 alone holds no large box: AP over large objects is undefined (COCOeval's −1).
    dets = [d for d in _detections() if d["image_id"] == 1]
    metrics = coco_detection_metrics(gt_file, dets, image_ids=[1])
    assert metrics["ap"] == pytest.approx(1.0) and metrics["ap_small"] == pytest.approx(1.0)
    assert metrics["ap_large"] is None
    # Over both images, image 2's box is missed: class 1 reaches recall 1/2 at precision 1, so it
    # scores 51 of COCO's 101 recall thresholds (0, .01, ..., .50); class 2 scores 1. Mean over classes:
    assert coco_detection_metrics(gt_file, dets)["ap50"] == pytest.approx((51 / 101 + 1) / 2, abs=1e-12)


def test_unknown_image_id_is_a_clear_error(gt_file: Path) -> None:
    with pytest.raises(ValueError, match="not in"):
        coco_detection_metrics(gt_file, [{"image_id": 9, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1.0}])


def test_to_coco_results_picks_top_k_pairs_and_clips() -> None:
    scores = torch.tensor([[[0.1, 0.9], [0.8, 0.2], [0.05, 0.7]]])  # (1, Q=3, C=2)
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.4], [0.95, 0.1, 0.2, 0.4], [0.0, 0.0, 0.1, 0.1]]])  # (1, 3, 4)
    results = to_coco_results(scores, boxes, [7], [1, 3], torch.tensor([[200, 100]]), top_k=3)
    assert [(r["category_id"], r["score"]) for r in results] == [
        (3, pytest.approx(0.9)),
        (1, pytest.approx(0.8)),
        (3, pytest.approx(0.7)),
    ]
    assert all(r["image_id"] == 7 for r in results)
    # query 0: x 0.4..0.6 → 80..120 px, y 0.3..0.7 → 30..70 px
    assert results[0]["bbox"] == pytest.approx([80.0, 30.0, 40.0, 40.0])
    # query 1: x 0.85..1.05 clipped to 170..200 px, y −0.1..0.3 clipped to 0..30 px
    assert results[1]["bbox"] == pytest.approx([170.0, 0.0, 30.0, 30.0])
    # query 2: x, y −0.05..0.05 clipped to 0..10 and 0..5 px
    assert results[2]["bbox"] == pytest.approx([0.0, 0.0, 10.0, 5.0])
    assert len(to_coco_results(scores, boxes, [7], [1, 3], torch.tensor([[200, 100]]))) == 6  # top_k capped at Q·C


def test_round_trip_through_to_coco_results(gt_file: Path) -> None:
    """Ground truth → normalised boxes with one-hot scores → COCO results → AP 1."""
    sizes = torch.tensor([[200, 200], [200, 200]])
    scores = torch.zeros(2, 2, 2)  # (B, Q=2, C=2)
    boxes = torch.full((2, 2, 4), 0.5)
    slot = {1: 0, 2: 0}
    for im, cat, (x, y, w, h) in GT_BOXES:
        q = slot[im]
        slot[im] += 1
        scores[im - 1, q, cat - 1] = 1.0
        boxes[im - 1, q] = torch.tensor([(x + w / 2) / 200, (y + h / 2) / 200, w / 200, h / 200])
    results = to_coco_results(scores, boxes, [1, 2], [1, 2], sizes)
    assert coco_detection_metrics(gt_file, results)["ap"] == pytest.approx(1.0)
