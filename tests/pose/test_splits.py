"""Pose splits: train / val / test disjoint figures fixed by the card; evaluate per split."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import Tensor, nn

from kdbench.adapters.pose import data as D
from kdbench.adapters.pose.adapter import PoseAdapter
from kdbench.adapters.pose.synthetic import VERSION, make_figures_dataset
from kdbench.errors import UsageError
from kdbench.protocol import Protocol, load_protocol


def _key(crop: Tensor) -> str:
    return hashlib.sha256(crop.to(torch.uint8).contiguous().numpy().tobytes()).hexdigest()


def _image_hashes(data: D.PoseSet) -> set[str]:
    return {hashlib.sha256(f.read_bytes()).hexdigest() for f in data.files}


class Oracle(nn.Module):
    """SimCC logits peaked at the ground truth of the crops of `data` it knows, flat elsewhere."""

    def __init__(self, data: D.PoseSet, split_ratio: float) -> None:
        super().__init__()
        crops = data.get_crops(torch.arange(len(data)))
        self.truth = {_key(c): kp for c, kp in zip(crops, data.keypoints, strict=True)}
        self.ratio = split_ratio
        self.bins = tuple(round(s * split_ratio) for s in data.input_size)

    def forward(self, images: Tensor) -> SimpleNamespace:
        b, k = len(images), next(iter(self.truth.values())).shape[0]
        x, y = torch.zeros(b, k, self.bins[0]), torch.zeros(b, k, self.bins[1])
        for i, im in enumerate(images):
            kp = self.truth.get(_key((im * 255).round()))
            if kp is not None:
                bx = (kp[:, 0] * self.ratio).round().long().clamp(0, self.bins[0] - 1)
                by = (kp[:, 1] * self.ratio).round().long().clamp(0, self.bins[1] - 1)
                x[i, torch.arange(k), bx] = 5.0
                y[i, torch.arange(k), by] = 5.0
        return SimpleNamespace(simcc_x=x, simcc_y=y)


def _protocol(name: str, **data: object) -> Protocol:
    protocol = copy.deepcopy(load_protocol("pose", name))
    protocol.card["data"].update(data)
    return protocol


@pytest.fixture(scope="module")
def adapter() -> PoseAdapter:
    return PoseAdapter(load_protocol("pose", "smoke"), None, torch.device("cpu"))


def test_figures_splits_are_disjoint_and_fixed_by_the_card(adapter: PoseAdapter, tmp_path: Path) -> None:
    sets = adapter.train_set, adapter.val_set, adapter.test_set
    assert [len(s) for s in sets] == [48, 16, 16]
    hashes = [_image_hashes(s) for s in sets]
    assert sum(len(h) for h in hashes) == len(set().union(*hashes)) == 80
    spec = load_protocol("pose", "smoke").card["data"]
    params = {k: spec[k] for k in ("n_train", "n_val", "n_test", "size", "seed")}
    fresh = make_figures_dataset(tmp_path / "fresh", **params)
    for split, s in zip(("train", "val", "test"), sets, strict=True):
        assert {hashlib.sha256(p.read_bytes()).hexdigest() for p in (fresh / split).glob("*.png")} == _image_hashes(s)
    done = json.loads((adapter.test_set.files[0].parents[1] / "DONE").read_text())
    assert (done["n_val"], done["n_test"], done["version"]) == (16, 16, VERSION)
    other = PoseAdapter(_protocol("smoke", n_test=4), None, torch.device("cpu"))
    assert len(other.test_set) == 4 and other.test_set.files[0].parents[1] != adapter.test_set.files[0].parents[1]


def test_evaluate_scores_the_split_it_is_asked(adapter: PoseAdapter) -> None:
    oracle = Oracle(adapter.val_set, adapter.split_ratio)
    val, test = adapter.evaluate(oracle, "val"), adapter.evaluate(oracle, "test")
    assert val["ap"] > 0.9 and test["ap"] < 0.2
    assert adapter.evaluate(Oracle(adapter.test_set, adapter.split_ratio), "test")["ap"] > 0.9
    assert adapter.evaluation_version == 2


def test_unknown_split_names_the_valid_ones(adapter: PoseAdapter) -> None:
    with pytest.raises(UsageError, match="unknown split 'valid' for pose; valid: train, val, test"):
        adapter.evaluate(Oracle(adapter.val_set, adapter.split_ratio), "valid")


def test_coco_val_is_held_out_of_train2017_and_test_is_val2017(tmp_path: Path) -> None:
    figures = make_figures_dataset(tmp_path / "figures", 10, 4, 1, seed=5)
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    for ours, theirs in (("train", "train"), ("val", "val")):
        ann = figures / "annotations" / f"person_keypoints_{ours}.json"
        (root / "annotations" / f"person_keypoints_{theirs}2017.json").symlink_to(ann)
        (root / f"{theirs}2017").symlink_to(figures / ours, target_is_directory=True)
    protocol = _protocol("coco", input_size=[48, 64], val_images=3)
    protocol.card["simcc"]["sigma"] = [1.225, 1.415]
    adapter = PoseAdapter(protocol, root, torch.device("cpu"))
    train, val, test = adapter.train_set, adapter.val_set, adapter.test_set
    assert (len(train), len(val), len(test)) == (7, 3, 4)
    assert not set(train.image_ids) & set(val.image_ids) and not _image_hashes(train) & _image_hashes(val)
    assert not (_image_hashes(train) | _image_hashes(val)) & _image_hashes(test)
    assert sorted(im["id"] for im in json.loads(val.gt_file.read_text())["images"]) == sorted(val.image_ids)
    again = D.load_coco_keypoint_splits(root / "annotations" / "person_keypoints_train2017.json", root / "train2017",
                                        root / "annotations" / "person_keypoints_val2017.json", root / "val2017",
                                        (48, 64), 3, 0, tmp_path / "gt")
    assert again[1].ann_ids == val.ann_ids and again[0].ann_ids == train.ann_ids
    oracle = Oracle(val, adapter.split_ratio)
    assert adapter.evaluate(oracle, "val")["ap"] > 0.9 and adapter.evaluate(oracle, "test")["ap"] < 0.2
