"""MNIST-1D (classification/small): generated offline, split three ways, cached; the 1-D ConvNet."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from kdbench.adapters.classification import data
from kdbench.adapters.classification.adapter import ClassificationAdapter
from kdbench.adapters.classification.models import ClassifierOutput, build_model
from kdbench.errors import UsageError
from kdbench.protocol import load_protocol


def _ids(ds: data.ArrayDataset) -> set[int]:
    assert ds.source_ids is not None
    return {int(i) for i in ds.source_ids}


@pytest.fixture(scope="module")
def splits() -> tuple[data.ArrayDataset, data.ArrayDataset, data.ArrayDataset]:
    return data.load_mnist1d_split(num_samples=400, val_fraction=0.25, test_fraction=0.25, split_seed=0, seed=3)


def test_mnist1d_splits_are_disjoint_stratified_signals(splits: tuple[data.ArrayDataset, ...]) -> None:
    train, val, test = splits
    assert (len(train), len(val), len(test)) == (200, 100, 100)
    ids = [_ids(s) for s in splits]
    assert not ids[0] & ids[1] and not ids[0] & ids[2] and not ids[1] & ids[2]
    assert set().union(*ids) == set(range(400))
    assert train.images.shape == (200, 1, 40) and train.images.dtype == torch.float32
    assert train.num_classes == 10 and np.bincount(val.labels.numpy(), minlength=10).tolist() == [10] * 10
    rows = {im.numpy().tobytes() for s in splits for im in s.images}
    assert len(rows) == 400  # no signal appears twice: the splits share none
    assert abs(train.images.mean().item()) < 1e-4 and abs(train.images.std(unbiased=False).item() - 1) < 1e-4


def test_mnist1d_is_deterministic_and_cached(splits: tuple[data.ArrayDataset, ...], tmp_path: Path) -> None:
    random.seed(7)
    np.random.seed(7)
    before = random.random(), np.random.rand()
    random.seed(7)
    np.random.seed(7)
    cached = data.load_mnist1d_split(400, 0.25, 0.25, 0, 3, cache=tmp_path)  # generates, writes
    assert (random.random(), np.random.rand()) == before  # the global generators are left as they were
    again = data.load_mnist1d_split(400, 0.25, 0.25, 0, 3, cache=tmp_path)  # reads the cache
    [folder] = [p for p in tmp_path.iterdir() if p.name.startswith("mnist1d-")]
    assert (folder / "pool.npz").is_file() and (folder / "DONE").is_file()
    for a, b, c in zip(splits, cached, again, strict=True):
        assert torch.equal(a.images, b.images) and torch.equal(b.images, c.images)
        assert torch.equal(a.labels, c.labels) and _ids(a) == _ids(c)
    other_split = data.load_mnist1d_split(400, 0.25, 0.25, 1, 3)
    assert _ids(other_split[1]) != _ids(splits[1])
    other_pool = data.load_mnist1d_split(400, 0.25, 0.25, 0, 4)
    assert not torch.equal(other_pool[0].images, splits[0].images)
    with pytest.raises(ValueError, match="val_fraction"):
        data.load_mnist1d_split(400, 0.6, 0.5)


def _shifted(row: torch.Tensor, s: int) -> torch.Tensor:
    """`row` moved by s samples to the left (s < 0: to the right), zero-filled."""
    return torch.nn.functional.pad(row, (2, 2))[2 + s:2 + s + len(row)]


def test_shift1d_is_a_deterministic_zero_filled_shift() -> None:
    x = torch.arange(1, 41, dtype=torch.float32).repeat(16, 2, 1)  # (16, 2, 40)
    a = data.augment(x, "shift1d", torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, data.augment(x, "shift1d", torch.Generator().manual_seed(0)))
    shifts = set()
    for row in a:
        [s] = [s for s in range(-2, 3) if torch.equal(row[0], _shifted(x[0, 0], s))]
        assert torch.equal(row[1], row[0])  # one offset per signal, all channels
        shifts.add(s)
    assert len(shifts) > 1
    with pytest.raises(ValueError, match="does not apply"):
        data.augment(torch.zeros(2, 1, 8, 8), "shift1d", torch.Generator())
    with pytest.raises(ValueError, match="does not apply"):
        data.augment(x, "shift", torch.Generator())


@pytest.mark.parametrize("kwargs", [{}, {"depth": 1, "kernel": 3}])
def test_convnet1d_builds_with_aux_heads_and_forwards(kwargs: dict[str, int]) -> None:
    torch.manual_seed(0)
    model = build_model("convnet1d", num_classes=10, in_channels=1, aux_heads=True, widths=(4, 8, 16), **kwargs)
    out = model(torch.randn(3, 1, 40))
    assert isinstance(out, ClassifierOutput) and out.logits.shape == (3, 10)
    assert len(out.aux_logits) == 2 and all(a.shape == (3, 10) for a in out.aux_logits)
    shapes = [tuple(out.features[n].shape) for n in ("stage1", "stage2", "stage3")]
    assert shapes == [(3, 4, 40), (3, 8, 20), (3, 16, 10)]
    assert out.features["embedding"].shape == (3, 16) and model.feature_dims()["embedding"] == 16
    (out.logits.sum() + sum(a.sum() for a in out.aux_logits)).backward()
    with pytest.raises(ValueError, match="odd kernel"):
        build_model("convnet1d", num_classes=10, in_channels=1, kernel=4)


def test_the_small_card_is_mnist1d(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    card = load_protocol("classification", "small")
    assert card.get("data.dataset") == "mnist1d" and card.get("student.arch") == "convnet1d"
    assert len(card.typed.seeds) >= 5 and card.typed.train.threads == 1
    small = tmp_path / "tiny.yaml"  # the card at a pool of 1,000 signals: under a second
    small.write_text(card.path.read_text().replace(f"num_samples: {card.get('data.num_samples')}", "num_samples: 1000"))
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))
    adapter = ClassificationAdapter(load_protocol("classification", str(small)), None, torch.device("cpu"))
    assert adapter.train_set.images.shape[1:] == (1, 40) and len(adapter.train_set) == 40
    batch = next(adapter.train_batches(8, torch.Generator().manual_seed(0)))
    out = adapter.forward(adapter.build_model("student", frozenset({"layers"})), batch)
    assert len(out.layers) == 3 and out.heads["cls"].logits.shape == (8, 10)
    bad = tmp_path / "bad.yaml"
    bad.write_text(small.read_text().replace("augmentation: shift1d", "augmentation: shift").replace(
        "augmentation: none", "augmentation: shift"))
    with pytest.raises(UsageError, match="does not apply"):
        ClassificationAdapter(load_protocol("classification", str(bad)), None, torch.device("cpu"))
