"""Detection data: the synthetic shapes generator, the COCO-format loader, flip augmentation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kdbench.adapters.detection.data import (
    SHAPES,
    DetectionSet,
    hflip_batch,
    load_coco2017,
    load_coco_detection,
    load_shapes,
    make_shapes_dataset,
)
from kdbench.adapters.detection.evaluate import coco_detection_metrics, to_coco_results
from tests.datafiles import data_root


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes") / "shapes", 12, 6, 6)


def _coco_fixture() -> Path:
    return data_root("coco-fixtures") / "coco-fixtures" / "test_coco.json"


def _perfect_results(data: DetectionSet) -> list[dict[str, object]]:
    """COCO results that repeat the set's own boxes with score 1, through `to_coco_results`."""
    q = max(1, *(len(b) for b in data.boxes))
    scores = torch.zeros(len(data), q, data.num_classes)  # (N, Q, C)
    boxes = torch.full((len(data), q, 4), 0.5)  # (N, Q, 4)
    for i, (b, lab) in enumerate(zip(data.boxes, data.labels, strict=True)):
        scores[i, torch.arange(len(lab)), lab] = 1.0
        boxes[i, : len(b)] = b
    return to_coco_results(scores, boxes, data.image_ids, data.category_ids, data.orig_sizes)


def test_shapes_layout_and_coco_format(shapes: Path) -> None:
    from pycocotools.coco import COCO

    assert sorted(p.name for p in (shapes / "train").iterdir())[:2] == ["000001.png", "000002.png"]
    for split, n in (("train", 12), ("val", 6), ("test", 6)):
        coco = COCO(str(shapes / "annotations" / f"instances_{split}.json"))
        assert len(coco.getImgIds()) == n and len(list((shapes / split).glob("*.png"))) == n
        assert [c["name"] for c in coco.loadCats([1, 2, 3])] == list(SHAPES)
        for image_id in coco.getImgIds():
            anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
            assert 1 <= len(anns) <= 4
            assert all(a["iscrowd"] == 0 and a["area"] == a["bbox"][2] * a["bbox"][3] for a in anns)
    assert json.loads((shapes / "DONE").read_text())["n_train"] == 12


def test_shapes_boxes_tightly_cover_the_drawn_pixels(tmp_path: Path) -> None:
    root = make_shapes_dataset(tmp_path / "single", 60, 0, 0, max_objects=1, seed=3)
    coco = json.loads((root / "annotations" / "instances_train.json").read_text())
    assert {a["category_id"] for a in coco["annotations"]} == {1, 2, 3}  # every shape is checked
    for ann in coco["annotations"]:
        pixels = np.asarray(Image.open(root / "train" / f"{ann['image_id']:06d}.png"))  # (S, S, 3)
        rows, cols = np.nonzero((pixels != 255).any(-1))  # the one shape on white
        x, y, w, h = ann["bbox"]
        assert [x, y, w, h] == [cols.min(), rows.min(), cols.max() + 1 - cols.min(), rows.max() + 1 - rows.min()]


def test_shapes_are_reproducible_and_cached(shapes: Path, tmp_path: Path) -> None:
    again = make_shapes_dataset(tmp_path / "again", 12, 6, 6)
    for split in ("train", "val", "test"):
        rel = f"annotations/instances_{split}.json"
        assert (again / rel).read_text() == (shapes / rel).read_text()
    for name in ("000001.png", "000012.png"):
        pixels = np.asarray(Image.open(again / "train" / name))
        assert np.array_equal(pixels, np.asarray(Image.open(shapes / "train" / name)))
    stamp = (again / "train" / "000001.png").stat().st_mtime_ns
    make_shapes_dataset(again, 12, 6, 6)  # same parameters: nothing is rewritten
    assert (again / "train" / "000001.png").stat().st_mtime_ns == stamp
    make_shapes_dataset(again, 5, 2, 2, seed=1)  # other parameters: regenerated in place
    assert len(list((again / "train").glob("*.png"))) == 5
    assert json.loads((again / "DONE").read_text())["seed"] == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left
    # image i depends on (seed, split, i) only: the first images of a smaller set are the same
    small = make_shapes_dataset(tmp_path / "small", 4, 0, 0)
    assert (small / "train" / "000004.png").read_bytes() == (shapes / "train" / "000004.png").read_bytes()


def test_load_shapes_preloaded_and_lazy_agree(shapes: Path) -> None:
    data = load_shapes(shapes, "train")
    assert data.images is not None and data.images.dtype == torch.uint8 and data.images.shape == (12, 3, 64, 64)
    assert data.category_names == list(SHAPES) and data.category_ids == [1, 2, 3] and data.num_classes == 3
    assert data.image_ids == list(range(1, 13)) and data.orig_sizes.tolist() == [[64, 64]] * 12
    for b, lab in zip(data.boxes, data.labels, strict=True):
        assert b.dtype == torch.float32 and b.shape == (len(lab), 4) and 1 <= len(lab) <= 4
        assert ((b[:, :2] - b[:, 2:] / 2) >= 0).all() and ((b[:, :2] + b[:, 2:] / 2) <= 1).all()
        assert ((lab >= 0) & (lab < 3)).all()
    lazy = load_coco_detection(data.ann_file, shapes / "train", 64, preload=False)
    assert lazy.images is None and lazy.files is not None
    idx = torch.tensor([3, 0, 11])
    assert torch.equal(lazy.get_images(idx), data.get_images(idx))
    png = torch.from_numpy(np.array(Image.open(shapes / "train" / "000004.png")))  # (S, S, 3)
    assert torch.equal(data.get_images(idx)[0], png.permute(2, 0, 1))
    boxes, labels = data.get_targets(idx)
    assert torch.equal(boxes[1], data.boxes[0]) and torch.equal(labels[2], data.labels[11])
    assert coco_detection_metrics(data.ann_file, _perfect_results(data))["ap"] == pytest.approx(1.0)


def test_load_coco_detection_on_the_real_coco_fixture() -> None:
    ann_file = _coco_fixture()
    data = load_coco_detection(ann_file, ann_file.parent, 96)
    assert data.image_ids == [785, 40083, 196141, 197388]
    assert data.category_names == ["person"] and data.category_ids == [1]
    assert [len(b) for b in data.boxes] == [1, 3, 5, 5]
    assert data.orig_sizes.tolist() == [[640, 425], [500, 333], [640, 429], [640, 392]]
    assert data.images is not None and data.images.shape == (4, 3, 96, 96)
    # image 785's person: bbox [280.79, 44.73, 218.7, 346.68] in a 640×425 image
    cx, cy, w, h = data.boxes[0][0].tolist()
    expected = [280.79 + 218.7 / 2, 44.73 + 346.68 / 2, 218.7, 346.68]
    assert [cx * 640, cy * 425, w * 640, h * 425] == pytest.approx(expected, abs=1e-3)
    lazy = load_coco_detection(ann_file, ann_file.parent, 96, preload=False, limit=2)
    assert lazy.image_ids == [785, 40083] and torch.equal(lazy.get_images(torch.tensor([1])), data.images[1:2])
    # predictions in the resized frame map back to the original pixels exactly
    assert coco_detection_metrics(ann_file, _perfect_results(data))["ap"] == pytest.approx(1.0)


def test_crowd_empty_and_degenerate_annotations(tmp_path: Path) -> None:
    Image.new("RGB", (40, 20), "white").save(tmp_path / "a.png")
    Image.new("RGB", (40, 20), "white").save(tmp_path / "b.png")
    coco = {
        "images": [
            {"id": 5, "file_name": "a.png", "width": 40, "height": 20},
            {"id": 6, "file_name": "b.png", "width": 40, "height": 20},
        ],
        "annotations": [
            {"id": 1, "image_id": 5, "category_id": 9, "bbox": [30, 10, 20, 20], "area": 400, "iscrowd": 0},
            {"id": 2, "image_id": 5, "category_id": 9, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 1},
            {"id": 3, "image_id": 5, "category_id": 4, "bbox": [45, 0, 5, 5], "area": 25, "iscrowd": 0},
        ],
        "categories": [{"id": 9, "name": "b"}, {"id": 4, "name": "a"}],
    }
    (tmp_path / "gt.json").write_text(json.dumps(coco))
    data = load_coco_detection(tmp_path / "gt.json", tmp_path, 16)
    assert data.category_ids == [4, 9] and data.category_names == ["a", "b"]
    assert data.labels[0].tolist() == [1]  # crowd and outside-the-image boxes are no targets
    assert data.boxes[0].tolist() == [pytest.approx([0.875, 0.75, 0.25, 0.5])]  # clipped to x 30..40, y 10..20
    assert data.boxes[1].shape == (0, 4) and data.image_ids == [5, 6]
    assert load_coco_detection(tmp_path / "gt.json", tmp_path, 16, keep_empty=False).image_ids == [5]


def test_missing_files_name_the_path_and_the_source(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        load_coco2017(tmp_path, "val", 640)
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "annotations" / "instances_val2017.json") in message
    assert "https://cocodataset.org/#download" in message and "annotations_trainval2017.zip" in message
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val2017.json").write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "x.jpg", "width": 4, "height": 4}],
                "annotations": [],
                "categories": [{"id": 1, "name": "p"}],
            }
        )
    )
    with pytest.raises(FileNotFoundError, match="val2017"):
        load_coco2017(tmp_path, "val", 640)
    (tmp_path / "val2017").mkdir()
    with pytest.raises(FileNotFoundError, match=r"x\.jpg"):
        load_coco2017(tmp_path, "val", 640)


def test_hflip_batch() -> None:
    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.uint8).reshape(2, 3, 4, 4)
    boxes = [torch.tensor([[0.25, 0.5, 0.1, 0.2]]), torch.zeros(0, 4)]
    out, out_boxes = hflip_batch(images, boxes, torch.Generator().manual_seed(0), p=1.0)
    assert torch.equal(out, images.flip(-1)) and out_boxes[0].tolist() == [pytest.approx([0.75, 0.5, 0.1, 0.2])]
    assert boxes[0][0, 0] == 0.25  # inputs untouched
    same, same_boxes = hflip_batch(images, boxes, torch.Generator().manual_seed(0), p=0.0)
    assert torch.equal(same, images) and torch.equal(same_boxes[0], boxes[0])
    many = torch.arange(64, dtype=torch.uint8).reshape(64, 1, 1, 1).expand(64, 3, 1, 2).contiguous()
    many[..., 1] = 255
    a, _ = hflip_batch(many, [torch.zeros(0, 4)] * 64, torch.Generator().manual_seed(1))
    b, _ = hflip_batch(many, [torch.zeros(0, 4)] * 64, torch.Generator().manual_seed(1))
    flipped = (a[:, 0, 0, 0] == 255).sum().item()
    assert torch.equal(a, b) and 16 < flipped < 48  # deterministic, about half flipped
