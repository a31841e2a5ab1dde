"""Classification splits: train / val / test disjoint and fixed by the card; evaluate per split."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from kdbench.adapters.classification import data
from kdbench.adapters.classification.adapter import ClassificationAdapter
from kdbench.errors import UsageError
from kdbench.protocol import load_protocol


def _hashes(images: torch.Tensor) -> set[str]:
    return {hashlib.sha256(im.numpy().tobytes()).hexdigest() for im in images}


def _ids(ds: data.ArrayDataset) -> set[int]:
    assert ds.source_ids is not None
    return {int(i) for i in ds.source_ids}


@pytest.fixture(scope="module")
def adapter() -> ClassificationAdapter:
    return ClassificationAdapter(load_protocol("classification", "smoke"), None, torch.device("cpu"))


def test_digits_splits_are_disjoint_and_fixed_by_the_card(adapter: ClassificationAdapter) -> None:
    sets = adapter.train_set, adapter.val_set, adapter.test_set
    assert [len(s) for s in sets] == [160, 60, 100]  # the smoke card's limits
    full = data.load_digits_split(0.15, 0.25, 0)
    ids = [_ids(s) for s in full]
    assert sum(len(i) for i in ids) == 1797 and len(set().union(*ids)) == 1797
    assert all(_ids(small) <= big for small, big in zip(sets, ids, strict=True))
    again = ClassificationAdapter(load_protocol("classification", "smoke"), None, torch.device("cpu"))
    for a, b in zip(sets, (again.train_set, again.val_set, again.test_set), strict=True):
        assert torch.equal(a.images, b.images) and _ids(a) == _ids(b)
    other = data.load_digits_split(0.15, 0.25, 1)
    assert _ids(other[1]) != ids[1]


def test_cifar100_val_is_held_out_of_the_training_file(tmp_path: Path) -> None:
    data.write_cifar100_fixture(tmp_path, n_train=60, n_test=20, num_classes=5, seed=1)
    train, val, test = data.load_cifar100(tmp_path, val_size=10, split_seed=0)
    assert (len(train), len(val), len(test)) == (50, 10, 20)
    assert not _ids(train) & _ids(val) and _ids(train) | _ids(val) == set(range(60))
    assert not _hashes(train.images) & _hashes(val.images)
    assert not (_hashes(train.images) | _hashes(val.images)) & _hashes(test.images)
    share = np.bincount(val.labels.numpy(), minlength=5) / 10
    full = np.bincount(np.concatenate([train.labels.numpy(), val.labels.numpy()]), minlength=5) / 60
    assert np.abs(share - full).max() <= 0.1 + 1e-9  # nearly stratified: within one image a class
    assert _ids(data.load_cifar100(tmp_path, val_size=10, split_seed=0)[1]) == _ids(val)
    assert _ids(data.load_cifar100(tmp_path, val_size=10, split_seed=1)[1]) != _ids(val)
    with pytest.raises(ValueError, match="val_size 60"):
        data.load_cifar100(tmp_path, val_size=60)


def test_evaluate_scores_val_and_test_separately(adapter: ClassificationAdapter) -> None:
    torch.manual_seed(0)
    model = adapter.build_model("student", frozenset())
    val, test = adapter.evaluate(model, "val"), adapter.evaluate(model, "test")
    assert set(val) == set(test) and val != test
    assert adapter.evaluation_version == 2


def test_unknown_split_names_the_valid_ones(adapter: ClassificationAdapter) -> None:
    model = adapter.build_model("student", frozenset())
    with pytest.raises(UsageError, match="unknown split 'valid' for classification; valid: train, val, test"):
        adapter.evaluate(model, "valid")
