"""Synthetic figures, the COCO keypoint loader (on mmpose's real COCO and COCO-WholeBody test
files when KDBENCH_DATA_ROOT is set) and OKS AP against pycocotools where the answer is known."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from kdbench.adapters.pose.data import PoseSet, hflip, load_coco_keypoints
from kdbench.adapters.pose.evaluate import keypoint_results, oks_metrics
from kdbench.adapters.pose.skeleton import COCO_SIGMAS, WHOLEBODY_SIGMAS, flip_index
from kdbench.adapters.pose.synthetic import make_figures_dataset
from tests.datafiles import data_root

INPUT = (48, 64)


@pytest.fixture(scope="module")
def figures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_figures_dataset(tmp_path_factory.mktemp("figures") / "set", 24, 12, 4, 96, seed=3)


def _fixtures() -> Path:
    return data_root("coco-fixtures") / "coco-fixtures"


def test_figures_are_deterministic_and_flag_visibility(figures: Path, tmp_path: Path) -> None:
    again = make_figures_dataset(tmp_path / "again", 24, 12, 4, 96, seed=3)
    ann = "annotations/person_keypoints_train.json"
    assert (figures / ann).read_text() == (again / ann).read_text()
    assert (figures / "train" / "000005.png").read_bytes() == (again / "train" / "000005.png").read_bytes()
    other = make_figures_dataset(tmp_path / "other", 24, 12, 4, 96, seed=4)
    assert (figures / ann).read_text() != (other / ann).read_text()
    coco = json.loads((figures / ann).read_text())
    kp = np.array([a["keypoints"] for a in coco["annotations"]]).reshape(-1, 17, 3)
    assert set(np.unique(kp[..., 2])) <= {0.0, 1.0, 2.0} and (kp[..., 2] == 1).any()  # self-occlusion
    for a, k in zip(coco["annotations"], kp, strict=True):
        assert a["num_keypoints"] == int((k[:, 2] > 0).sum()) > 0
        assert a["area"] <= a["bbox"][2] * a["bbox"][3]


def _perfect(data: PoseSet) -> list[dict]:
    points = data.to_image(data.keypoints[..., :2], torch.arange(len(data))).numpy()
    return keypoint_results(points, np.ones(points.shape[:2]), data.image_ids)


def test_crops_map_back_and_perfect_predictions_score_one(figures: Path) -> None:
    data = load_coco_keypoints(figures / "annotations" / "person_keypoints_val.json", figures / "val", INPUT)
    assert data.crops is not None and data.crops.shape == (12, 3, 64, 48)
    coco = json.loads(data.gt_file.read_text())
    orig = np.array([a["keypoints"] for a in coco["annotations"]]).reshape(-1, 17, 3)
    back = data.to_image(data.keypoints[..., :2], torch.arange(12)).numpy()
    labeled = orig[..., 2] > 0
    assert np.allclose(back[labeled], orig[..., :2][labeled], atol=1e-3)
    metrics = oks_metrics(data.gt_file, _perfect(data), COCO_SIGMAS, data.image_ids)
    assert metrics == {"ap": 1.0, "ap50": 1.0, "ap75": 1.0, "ar": 1.0}
    shifted = _perfect(data)
    for r in shifted:
        r["keypoints"] = [v + 4.0 if i % 3 < 2 else v for i, v in enumerate(r["keypoints"])]
    assert oks_metrics(data.gt_file, shifted, COCO_SIGMAS, data.image_ids)["ap"] < 1.0
    assert oks_metrics(data.gt_file, [], COCO_SIGMAS, data.image_ids)["ap"] == 0.0


def test_hflip_mirrors_and_swaps() -> None:
    crops = torch.arange(2 * 3 * 2 * 4).reshape(2, 3, 2, 4)
    kp = torch.zeros(2, 17, 3)
    kp[:, 5] = torch.tensor([1.0, 1.0, 2.0])  # left shoulder at x = 1
    out, out_kp = hflip(crops, kp, flip_index(17), torch.tensor([True, False]))
    assert torch.equal(out[0], crops[0].flip(-1)) and torch.equal(out[1], crops[1])
    assert out_kp[0, 6].tolist() == [2.0, 1.0, 2.0] and out_kp[0, 5, 2] == 0  # → right shoulder, x = 4 − 1 − 1
    assert torch.equal(out_kp[1], kp[1])


def test_loader_on_real_coco_keypoints() -> None:
    root = _fixtures()
    data = load_coco_keypoints(root / "test_coco.json", root, INPUT)
    coco = json.loads((root / "test_coco.json").read_text())
    expected = [a for a in coco["annotations"] if not a["iscrowd"] and max(a["keypoints"][2::3]) > 0]
    assert len(data) == len(expected) and data.num_keypoints == 17
    assert data.crops is not None and data.crops.dtype == torch.uint8 and data.crops.float().std() > 10
    metrics = oks_metrics(data.gt_file, _perfect(data), COCO_SIGMAS, data.image_ids)
    assert metrics["ap"] == pytest.approx(1.0) and metrics["ar"] == pytest.approx(1.0)


def test_loader_on_real_coco_wholebody(tmp_path: Path) -> None:
    root = _fixtures()
    data = load_coco_keypoints(root / "test_coco_wholebody.json", root, INPUT, wholebody=True, gt_dir=tmp_path)
    assert data.num_keypoints == 133 and len(WHOLEBODY_SIGMAS) == 133
    gt = json.loads(data.gt_file.read_text())
    ann = next(a for a in gt["annotations"] if a["id"] == data.ann_ids[0])
    assert len(ann["keypoints"]) == 3 * 133 and ann["num_keypoints"] == int((data.keypoints[0, :, 2] > 0).sum())
    assert (data.keypoints[:, 17:, 2] > 0).any()  # face, hand or foot keypoints are read
    metrics = oks_metrics(data.gt_file, _perfect(data), WHOLEBODY_SIGMAS, data.image_ids)
    assert metrics["ap"] == pytest.approx(1.0)
