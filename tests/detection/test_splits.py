"""Detection splits: train / val / test disjoint scenes fixed by the card; evaluate per split."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import Tensor, nn

from kdbench.adapters.detection import data as D
from kdbench.adapters.detection.adapter import DetectionAdapter
from kdbench.errors import UsageError
from kdbench.protocol import Protocol, load_protocol


def _key(image: Tensor) -> str:
    return hashlib.sha256(image.to(torch.uint8).contiguous().numpy().tobytes()).hexdigest()


def _hashes(data: D.DetectionSet) -> set[str]:
    images = data.get_images(torch.arange(len(data)))
    return {_key(im) for im in images}


class Oracle(nn.Module):
    """Returns the ground truth of the images of `data` it knows (by pixels), nothing elsewhere."""

    def __init__(self, data: D.DetectionSet, queries: int = 8) -> None:
        super().__init__()
        self.queries, self.classes = queries, data.num_classes
        images = data.get_images(torch.arange(len(data)))
        self.truth = {_key(im): (b, lab) for im, b, lab in zip(images, data.boxes, data.labels, strict=True)}

    def forward(self, images: Tensor) -> SimpleNamespace:
        b = len(images)
        logits = torch.full((b, self.queries, self.classes), -20.0)
        boxes = torch.full((b, self.queries, 4), 0.5)
        for i, im in enumerate(images):
            truth = self.truth.get(_key((im * 255).round()))
            if truth is not None:
                n = len(truth[1])
                logits[i, torch.arange(n), truth[1]] = 20.0
                boxes[i, :n] = truth[0]
        return SimpleNamespace(logits=logits[None], boxes=boxes[None])


def _protocol(name: str, **data: object) -> Protocol:
    protocol = copy.deepcopy(load_protocol("detection", name))
    protocol.card["data"].update(data)
    return protocol


@pytest.fixture(scope="module")
def adapter() -> DetectionAdapter:
    return DetectionAdapter(load_protocol("detection", "smoke"), None, torch.device("cpu"))


def test_shapes_splits_are_disjoint_scenes_fixed_by_the_card(adapter: DetectionAdapter, tmp_path: Path) -> None:
    sets = adapter.train_set, adapter.val_set, adapter.test_set
    assert [len(s) for s in sets] == [48, 16, 16]
    hashes = [_hashes(s) for s in sets]
    assert sum(len(h) for h in hashes) == len(set().union(*hashes)) == 80  # no scene twice
    spec = {k: v for k, v in load_protocol("detection", "smoke").card["data"].items() if k != "dataset"}
    fresh = D.make_shapes_dataset(tmp_path / "fresh", **spec)  # type: ignore[arg-type]
    for split, s in zip(("train", "val", "test"), sets, strict=True):
        assert _hashes(D.load_shapes(fresh, split)) == _hashes(s)


def test_the_cache_key_follows_the_split_sizes(adapter: DetectionAdapter) -> None:
    other = DetectionAdapter(_protocol("smoke", n_test=4), None, torch.device("cpu"))
    assert len(other.test_set) == 4 and other.test_set.ann_file.parents[1] != adapter.test_set.ann_file.parents[1]
    assert _hashes(other.test_set) < _hashes(adapter.test_set)  # image i depends on (seed, split, i) only
    done = json.loads((adapter.test_set.ann_file.parents[1] / "DONE").read_text())
    assert (done["n_val"], done["n_test"], done["version"]) == (16, 16, D.SHAPES_VERSION)


def test_evaluate_scores_the_split_it_is_asked(adapter: DetectionAdapter) -> None:
    oracle = Oracle(adapter.val_set)
    val, test = adapter.evaluate(oracle, "val"), adapter.evaluate(oracle, "test")
    assert val["ap"] == pytest.approx(1.0) and test["ap"] < 0.1
    assert adapter.evaluate(Oracle(adapter.test_set), "test")["ap"] == pytest.approx(1.0)
    assert adapter.evaluation_version == 3


def test_unknown_split_names_the_valid_ones(adapter: DetectionAdapter) -> None:
    with pytest.raises(UsageError, match="unknown split 'dev' for detection; valid: train, val, test"):
        adapter.evaluate(Oracle(adapter.val_set), "dev")


def test_coco2017_val_is_held_out_of_train2017_and_test_is_val2017(tmp_path: Path) -> None:
    shapes = D.make_shapes_dataset(tmp_path / "shapes", 10, 4, 0, seed=5)
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    for ours, theirs in (("train", "train2017"), ("val", "val2017")):
        ann = shapes / "annotations" / f"instances_{ours}.json"
        (root / "annotations" / f"instances_{theirs}.json").symlink_to(ann)
        (root / theirs).symlink_to(shapes / ours, target_is_directory=True)
    adapter = DetectionAdapter(_protocol("coco2017", size=64, val_images=3), root, torch.device("cpu"))
    train, val, test = adapter.train_set, adapter.val_set, adapter.test_set
    assert (len(train), len(val), len(test)) == (7, 3, 4)
    assert not set(train.image_ids) & set(val.image_ids)
    assert set(train.image_ids) | set(val.image_ids) == set(range(1, 11))
    assert not (_hashes(train) | _hashes(val)) & _hashes(test)
    assert json.loads(val.ann_file.read_text())["images"] == [  # the val ground truth: its images alone
        im for im in json.loads((shapes / "annotations" / "instances_train.json").read_text())["images"]
        if im["id"] in val.image_ids]
    assert test.ann_file == root / "annotations" / "instances_val2017.json"
    again = D.load_coco2017_splits(root, 64, 3, 0, tmp_path / "gt")
    assert again[1].image_ids == val.image_ids and again[0].image_ids == train.image_ids
    assert D.load_coco2017_splits(root, 64, 3, 1, tmp_path / "gt")[1].image_ids != val.image_ids
    oracle = Oracle(val)
    assert adapter.evaluate(oracle, "val")["ap"] == pytest.approx(1.0)
    assert adapter.evaluate(oracle, "test")["ap"] < 0.1
    with pytest.raises(UsageError, match="cannot hold out 10 of 10 train2017 images"):
        DetectionAdapter(_protocol("coco2017", size=64, val_images=10), root, torch.device("cpu"))
