"""Classification data: digits split, CIFAR-100 pickles, augmentation, batching."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from kdbench.adapters.classification import data


@pytest.fixture(scope="module")
def digits() -> tuple[data.ArrayDataset, data.ArrayDataset, data.ArrayDataset]:
    return data.load_digits_split(val_fraction=0.15, test_fraction=0.25, split_seed=0)


def test_digits_split_sizes_and_types(digits: tuple[data.ArrayDataset, ...]) -> None:
    train, val, test = digits
    assert len(train) + len(val) + len(test) == 1797
    assert len(test) == 450 and len(val) == 270  # ceil(0.25 · 1797), ceil(0.15 · 1797)
    assert train.images.shape == (len(train), 1, 8, 8) and train.images.dtype == torch.float32
    assert train.labels.dtype == torch.int64 and test.labels.dtype == torch.int64
    assert train.num_classes == 10 and train.class_names == [str(c) for c in range(10)]


def test_digits_split_is_stratified(digits: tuple[data.ArrayDataset, ...]) -> None:
    train, val, test = digits
    share_train = np.bincount(train.labels.numpy(), minlength=10) / len(train)
    share_val = np.bincount(val.labels.numpy(), minlength=10) / len(val)
    share_test = np.bincount(test.labels.numpy(), minlength=10) / len(test)
    assert np.abs(share_train - share_test).max() < 0.01
    assert np.abs(share_train - share_val).max() < 0.01


def test_digits_normalised_with_train_stats(digits: tuple[data.ArrayDataset, ...]) -> None:
    train, _, test = digits
    assert abs(train.images.mean().item()) < 1e-4
    assert abs(train.images.std(unbiased=False).item() - 1) < 1e-4
    assert abs(test.images.mean().item()) < 0.1  # same stats applied, not the test set's own


def test_digits_limits_are_deterministic_and_balanced() -> None:
    train, val, test = data.load_digits_split(limit_train=50, limit_val=30, limit_test=20)
    again, _, _ = data.load_digits_split(limit_train=50, limit_val=30, limit_test=20)
    assert len(train) == 50 and len(val) == 30 and len(test) == 20
    torch.testing.assert_close(train.images, again.images)
    assert np.bincount(train.labels.numpy(), minlength=10).tolist() == [5] * 10
    assert np.bincount(val.labels.numpy(), minlength=10).tolist() == [3] * 10
    other_seed, _, _ = data.load_digits_split(split_seed=1, limit_train=50)
    assert not torch.equal(train.images, other_seed.images)


def test_cifar100_fixture_round_trip(tmp_path: Path) -> None:
    folder = data.write_cifar100_fixture(tmp_path, n_train=12, n_test=6, seed=3)
    with (folder / "train").open("rb") as f:
        raw = pickle.load(f, encoding="bytes")
    assert set(raw) == {b"filenames", b"batch_label", b"fine_labels", b"coarse_labels", b"data"}
    with (folder / "meta").open("rb") as f:
        assert set(pickle.load(f, encoding="bytes")) == {
            b"fine_label_names",
            b"coarse_label_names",
        }

    train, val, test = data.load_cifar100(tmp_path, val_size=4)
    assert train.images.shape == (8, 3, 32, 32) and val.images.shape == (4, 3, 32, 32)
    assert test.images.shape == (6, 3, 32, 32)
    assert train.num_classes == 100 and len(train.class_names) == 100
    assert train.source_ids is not None and val.source_ids is not None
    assert sorted([*train.source_ids, *val.source_ids]) == list(range(12))
    assert train.labels.tolist() == [raw[b"fine_labels"][i] for i in train.source_ids]
    # pixel 0 of training-file image i: red channel of row 0, column 0, normalised with the CIFAR-100 stats
    i = int(train.source_ids[0])
    red = raw[b"data"][i, 0] / 255.0
    expected = (red - data.CIFAR100_MEAN[0]) / data.CIFAR100_STD[0]
    assert train.images[0, 0, 0, 0].item() == pytest.approx(expected, abs=1e-5)
    blue_last = (raw[b"data"][i, -1] / 255.0 - data.CIFAR100_MEAN[2]) / data.CIFAR100_STD[2]
    assert train.images[0, 2, 31, 31].item() == pytest.approx(blue_last, abs=1e-5)


def test_cifar100_missing_file_message(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        data.load_cifar100(tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert "'train'" in message and str(tmp_path / "cifar-100-python") in message
    assert "CIFAR-100 python version" in message and data.CIFAR100_URL in message


def test_cifar100_missing_test_file(tmp_path: Path) -> None:
    folder = data.write_cifar100_fixture(tmp_path, n_train=2, n_test=2)
    (folder / "test").unlink()
    with pytest.raises(FileNotFoundError, match="'test'"):
        data.load_cifar100(tmp_path)


def test_cifar100_malformed_array_names_file(tmp_path: Path) -> None:
    folder = data.write_cifar100_fixture(tmp_path, n_train=4, n_test=2)
    with (folder / "train").open("rb") as f:
        batch = pickle.load(f, encoding="bytes")
    batch[b"data"] = batch[b"data"][:, :100]  # truncated rows
    with (folder / "train").open("wb") as f:
        pickle.dump(batch, f, protocol=2)
    with pytest.raises(ValueError, match=r"train.*\(N, 3072\)"):
        data.load_cifar100(tmp_path)


@pytest.mark.parametrize(
    ("kind", "shape"), [("shift", (5, 1, 8, 8)), ("crop_flip", (5, 3, 32, 32))]
)
def test_augment_deterministic_and_shape_preserving(kind: str, shape: tuple[int, ...]) -> None:
    images = torch.randn(shape)
    a = data.augment(images, kind, torch.Generator().manual_seed(7))
    b = data.augment(images, kind, torch.Generator().manual_seed(7))
    c = data.augment(images, kind, torch.Generator().manual_seed(8))
    assert a.shape == images.shape and a.dtype == images.dtype
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)


def test_augment_none_is_identity() -> None:
    images = torch.randn(4, 3, 32, 32)
    assert data.augment(images, "none", torch.Generator().manual_seed(0)) is images


def test_crop_flip_is_a_shifted_or_mirrored_crop() -> None:
    # every output is a crop of the zero-padded input, mirrored about half of the time
    images = torch.randn(64, 2, 6, 6)
    out = data.augment(images, "crop_flip", torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    mirrored = 0
    for i in range(len(images)):
        crops = [padded[i, :, y : y + 6, x : x + 6] for y in range(9) for x in range(9)]
        plain = any(torch.equal(out[i], c) for c in crops)
        flipped = any(torch.equal(out[i], c.flip(-1)) for c in crops)
        assert plain or flipped
        mirrored += flipped and not plain
    assert 16 <= mirrored <= 48  # Binomial(64, 0.5), far inside its range


def test_shift_moves_by_at_most_one_pixel() -> None:
    images = torch.zeros(32, 1, 8, 8)
    images[:, :, 4, 4] = 1.0  # one bright pixel in the middle
    out = data.augment(images, "shift", torch.Generator().manual_seed(0))
    ys, xs = torch.nonzero(out[:, 0], as_tuple=True)[1:]
    assert len(ys) == 32 and ys.sub(4).abs().max() <= 1 and xs.sub(4).abs().max() <= 1
    assert len({(int(y), int(x)) for y, x in zip(ys, xs, strict=True)}) > 1


def test_unknown_augmentation_lists_kinds() -> None:
    with pytest.raises(ValueError, match="crop_flip"):
        data.augment(torch.zeros(1, 1, 8, 8), "mixup", torch.Generator())


def test_batches_cover_every_index_once() -> None:
    idx = list(data.batches(10, 4, torch.Generator().manual_seed(0)))
    assert [len(b) for b in idx] == [4, 4, 2]
    assert sorted(torch.cat(idx).tolist()) == list(range(10))
    again = list(data.batches(10, 4, torch.Generator().manual_seed(0)))
    assert all(torch.equal(a, b) for a, b in zip(idx, again, strict=True))
    ordered = list(data.batches(10, 4, torch.Generator(), shuffle=False, drop_last=True))
    assert [b.tolist() for b in ordered] == [[0, 1, 2, 3], [4, 5, 6, 7]]
