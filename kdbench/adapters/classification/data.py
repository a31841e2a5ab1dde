"""Classification data: scikit-learn's digits (embedded), MNIST-1D (generated offline) and
CIFAR-100 (user's files), in memory.

Datasets are held as normalised float32 tensors; augmentation runs on batches of tensors and
is deterministic given a `torch.Generator`. No code here downloads anything.
"""

from __future__ import annotations

import importlib.metadata
import pickle
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from kdbench.adapters.generated import materialise
from kdbench.adapters.splits import stratified_holdout

CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_DIR = "cifar-100-python"
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

AUGMENT_KINDS: tuple[str, ...] = ("none", "shift", "crop_flip", "shift1d")
AUGMENT_1D: frozenset[str] = frozenset({"shift1d"})  # the kinds for (N, C, L) signals ("none" fits all)
MNIST1D_VERSION = 1  # bump when the cached pool's layout or generation changes


@dataclass
class ArrayDataset:
    """An in-memory labelled image (or 1-D signal) set.

    Attributes:
        images: (N, C, H, W) images or (N, C, L) signals, float32, already normalised.
        labels: (N,) int64 class indices in [0, num_classes).
        num_classes: K.
        class_names: K names, index-aligned with the labels.
        source_ids: (N,) each image's index in the file or dataset it was read from (with the
            split's name, it identifies the image: disjoint splits have disjoint ids); None
            where unknown.
    """

    images: Tensor
    labels: Tensor
    num_classes: int
    class_names: list[str]
    source_ids: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.images.dim() not in (3, 4) or self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"ArrayDataset expects images (N, C, H, W) or signals (N, C, L) and labels (N,), got "
                f"{tuple(self.images.shape)} and {tuple(self.labels.shape)}"
            )
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")
        if self.source_ids is not None and self.source_ids.shape != (len(self.labels),):
            raise ValueError(f"{self.source_ids.shape} source ids for {len(self.labels)} images")

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _interleave_classes(labels: np.ndarray) -> np.ndarray:
    """Order indices round-robin over classes, so that any prefix is close to stratified.

    Within a class the original order is kept: index i goes to position (rank in its class,
    class), sorted lexicographically.
    """
    rank = np.zeros(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        rank[members] = np.arange(len(members))
    return np.lexsort((labels, rank))  # primary key: rank, then class


def load_digits_split(
    val_fraction: float = 0.15,
    test_fraction: float = 0.25,
    split_seed: int = 0,
    limit_train: int | None = None,
    limit_val: int | None = None,
    limit_test: int | None = None,
) -> tuple[ArrayDataset, ArrayDataset, ArrayDataset]:
    """scikit-learn's 8×8 handwritten digits (1,797 images, 10 classes), split stratified in three.

    The test set is split off first (`test_fraction` of all images, rounded up as scikit-learn
    does), then the validation set from the rest (⌈`val_fraction` · 1,797⌉ images), both by
    stratified `train_test_split` with `random_state=split_seed`. Pixels are scaled to [0, 1]
    (÷16), then normalised with the training set's mean and std (one channel). Every set is
    ordered round-robin over classes, so `limit_*` keeps a deterministic, nearly stratified
    prefix (for the smoke tier).

    Args:
        val_fraction: fraction of all images held out for validation, in (0, 1).
        test_fraction: fraction of all images held out for testing, in (0, 1).
        split_seed: `random_state` of both stratified splits.
        limit_train: keep at most this many training images.
        limit_val: keep at most this many validation images.
        limit_test: keep at most this many test images.

    Returns:
        (train, val, test) datasets with images (N, 1, 8, 8).

    Raises:
        ValueError: the fractions leave no training images.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)  # (1797, 1, 8, 8)
    y = digits.target.astype(np.int64)
    return _split_three(x, y, val_fraction, test_fraction, split_seed, (limit_train, limit_val, limit_test))


def _split_three(
    x: np.ndarray,
    y: np.ndarray,
    val_fraction: float,
    test_fraction: float,
    split_seed: int,
    limits: tuple[int | None, int | None, int | None],
) -> tuple[ArrayDataset, ArrayDataset, ArrayDataset]:
    """Stratified train/val/test of a pool of 10 classes (see `load_digits_split`), normalised with
    the training set's mean and std (one channel); each set ordered round-robin over classes."""
    from sklearn.model_selection import train_test_split

    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"need 0 < val_fraction, 0 < test_fraction, val_fraction + test_fraction < 1; "
                         f"got {val_fraction}, {test_fraction}")
    idx_rest, idx_test = train_test_split(
        np.arange(len(y)), test_size=test_fraction, stratify=y, random_state=split_seed
    )
    n_val = int(np.ceil(val_fraction * len(y)))
    idx_train, idx_val = train_test_split(
        idx_rest, test_size=n_val, stratify=y[idx_rest], random_state=split_seed
    )
    idx_train = idx_train[_interleave_classes(y[idx_train])][:limits[0]]
    idx_val = idx_val[_interleave_classes(y[idx_val])][:limits[1]]
    idx_test = idx_test[_interleave_classes(y[idx_test])][:limits[2]]
    mean, std = float(x[idx_train].mean()), float(x[idx_train].std())
    names = [str(c) for c in range(10)]

    def make(idx: np.ndarray) -> ArrayDataset:
        images = torch.from_numpy((x[idx] - mean) / std)
        return ArrayDataset(images, torch.from_numpy(y[idx]), 10, names, idx.astype(np.int64))

    return make(idx_train), make(idx_val), make(idx_test)


def _generate_mnist1d(num_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The MNIST-1D generator (Greydanus, 2020) with its default arguments: a pool of
    ⌊num_samples / 10⌋ signals per class, (N, 40) float64 and (N,) labels.

    `make_dataset` is procedural and offline (its download path, `get_dataset`, is never used);
    it reseeds Python's and NumPy's global generators, whose states are restored afterwards.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed, args.train_split = num_samples, seed, 1.0  # all in 'x': split here
    states = random.getstate(), np.random.get_state()
    try:
        pool = make_dataset(args)
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
    return np.asarray(pool["x"], dtype=np.float64), np.asarray(pool["y"], dtype=np.int64)


def mnist1d_pool(num_samples: int, seed: int, cache: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The generated MNIST-1D pool, (N, 40) float32 signals and (N,) int64 labels.

    Generating takes about 0.4 ms a signal; with `cache` the pool is written once to
    `cache/mnist1d-<key>/pool.npz` (key: the parameters and the mnist1d version) and read back.
    """
    if cache is None:
        x, y = _generate_mnist1d(num_samples, seed)
        return x.astype(np.float32), y
    params = {"version": MNIST1D_VERSION, "mnist1d": importlib.metadata.version("mnist1d"),
              "num_samples": num_samples, "seed": seed}
    from kdbench.cache import sha256_json

    def write(folder: Path) -> None:
        x, y = _generate_mnist1d(num_samples, seed)
        np.savez(folder / "pool.npz", x=x.astype(np.float32), y=y)

    root = materialise(Path(cache) / f"mnist1d-{sha256_json(params)[:16]}", params, write)
    with np.load(root / "pool.npz") as f:
        return f["x"], f["y"]


def load_mnist1d_split(
    num_samples: int = 10000,
    val_fraction: float = 0.2,
    test_fraction: float = 0.3,
    split_seed: int = 0,
    seed: int = 42,
    limit_train: int | None = None,
    limit_val: int | None = None,
    limit_test: int | None = None,
    cache: Path | None = None,
) -> tuple[ArrayDataset, ArrayDataset, ArrayDataset]:
    """MNIST-1D (Greydanus, 2020): 10 classes of 40-sample 1-D signals, generated offline by the
    `mnist1d` package, split stratified in three like `load_digits_split`.

    One pool of ⌊num_samples / 10⌋ signals per class is generated with the generator's own
    `seed` (its default arguments otherwise: template length 12, padding 36–60, translation up to
    48, correlated and iid noise, shear); test, then val are split off it with `split_seed`.
    Signals are normalised with the training set's mean and std.

    Args:
        num_samples: pool size (rounded down to a multiple of 10).
        val_fraction: fraction of the pool held out for validation, in (0, 1).
        test_fraction: fraction of the pool held out for testing, in (0, 1).
        split_seed: `random_state` of both stratified splits.
        seed: the generator's seed.
        limit_train: keep at most this many training signals.
        limit_val: keep at most this many validation signals.
        limit_test: keep at most this many test signals.
        cache: folder where the generated pool is written once and reused (None: regenerate).

    Returns:
        (train, val, test) datasets with signals (N, 1, 40); `source_ids` index the pool.

    Raises:
        ValueError: fewer than 10 samples, or the fractions leave no training signals.
    """
    if num_samples < 10:
        raise ValueError(f"MNIST-1D num_samples must be ≥ 10 (one per class), got {num_samples}")
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"need 0 < val_fraction, 0 < test_fraction, val_fraction + test_fraction < 1; "
                         f"got {val_fraction}, {test_fraction}")
    x, y = mnist1d_pool(num_samples, seed, cache)
    return _split_three(x[:, None, :], y, val_fraction, test_fraction, split_seed,
                        (limit_train, limit_val, limit_test))


def _missing_message(path: Path, root: Path) -> str:
    return (
        f"CIFAR-100 file {path.name!r} is missing under {path.parent}: download the "
        f'"CIFAR-100 python version" from {CIFAR100_URL} and extract it under --data-root '
        f"({root}), giving {root / CIFAR100_DIR}/{{train,test,meta}}"
    )


def _read_pickle(path: Path, root: Path) -> dict[bytes, Any]:
    if not path.is_file():
        raise FileNotFoundError(_missing_message(path, root))
    with path.open("rb") as f:
        # The official files are (trusted) Python 2 pickles; their keys and strings are bytes.
        obj = pickle.load(f, encoding="bytes")
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return obj


def _read_split(path: Path, root: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3, 32, 32) uint8 images and (N,) int64 fine labels from one CIFAR-100 pickle."""
    batch = _read_pickle(path, root)
    if b"data" not in batch or b"fine_labels" not in batch:
        raise ValueError(f"{path}: missing key b'data' or b'fine_labels'; found {sorted(batch)}")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"fine_labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: b'data' must be (N, 3072) uint8, got {data.shape} {data.dtype}")
    if labels.shape != (data.shape[0],):
        raise ValueError(
            f"{path}: {labels.shape[0]} fine labels for {data.shape[0]} images in b'data'"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{path}: fine labels outside [0, {num_classes})")
    return data.reshape(-1, 3, 32, 32), labels  # rows are R(1024) G(1024) B(1024), row-major


def _normalise_cifar(data: np.ndarray) -> Tensor:
    """(N, 3, 32, 32) uint8 → float32 in [0, 1], standardised per channel."""
    mean = torch.tensor(CIFAR100_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR100_STD).view(1, 3, 1, 1)
    return (torch.from_numpy(data).float().div_(255.0) - mean) / std


def load_cifar100(
    root: Path, val_size: int = 5000, split_seed: int = 0
) -> tuple[ArrayDataset, ArrayDataset, ArrayDataset]:
    """CIFAR-100 (Krizhevsky, 2009) from the official python pickles, fine labels.

    Reads `root/cifar-100-python/{train,test,meta}` and normalises with the usual CIFAR-100
    mean and std. Validation = `val_size` images of the official training file, held out
    nearly stratified by class with a generator seeded by `split_seed` (50 per class for 5,000);
    training = the rest; test = the official test file. Images of the full set take about
    0.6 GB (train) as float32.

    Args:
        root: the data root (--data-root) that holds `cifar-100-python/`.
        val_size: training-file images held out for validation, 0 < val_size < its size.
        split_seed: seed of the held-out draw.

    Returns:
        (train, val, test) datasets with images (N, 3, 32, 32); `source_ids` are row indices
        into the training file (train, val) or the test file (test).

    Raises:
        FileNotFoundError: a file is missing (the message says which and where to get it).
        ValueError: a file is malformed (the message names it) or `val_size` does not fit.
    """
    root = Path(root)
    folder = root / CIFAR100_DIR
    for name in ("train", "test", "meta"):  # check all first: one clear error, before any work
        if not (folder / name).is_file():
            raise FileNotFoundError(_missing_message(folder / name, root))
    meta = _read_pickle(folder / "meta", root)
    if b"fine_label_names" not in meta:
        raise ValueError(f"{folder / 'meta'}: missing key b'fine_label_names'")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[b"fine_label_names"]]
    data, labels = _read_split(folder / "train", root, len(names))
    if not 0 < val_size < len(labels):
        raise ValueError(f"CIFAR-100 val_size {val_size} must be in [1, {len(labels) - 1}] "
                         f"(the training file holds {len(labels)} images)")
    idx_val = stratified_holdout(labels, val_size, split_seed)
    idx_train = np.setdiff1d(np.arange(len(labels)), idx_val)
    test_data, test_labels = _read_split(folder / "test", root, len(names))

    def make(images: np.ndarray, y: np.ndarray, idx: np.ndarray) -> ArrayDataset:
        return ArrayDataset(_normalise_cifar(np.ascontiguousarray(images[idx])), torch.from_numpy(y[idx]),
                            len(names), names, idx.astype(np.int64))

    return (make(data, labels, idx_train), make(data, labels, idx_val),
            make(test_data, test_labels, np.arange(len(test_labels))))


def write_cifar100_fixture(
    root: Path, n_train: int = 40, n_test: int = 20, num_classes: int = 100, seed: int = 0
) -> Path:
    """Write a tiny random CIFAR-100 in exactly the official pickle format (for tests).

    Args:
        root: the data root; files go to `root/cifar-100-python/{train,test,meta}`.
        n_train: training images.
        n_test: test images.
        num_classes: fine classes (labels and names); coarse label = fine % 20.
        seed: numpy seed for images and labels.

    Returns:
        The `cifar-100-python` folder.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / CIFAR100_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, label in (("train", n_train, b"training"), ("test", n_test, b"testing")):
        fine = rng.integers(0, num_classes, size=n)
        batch = {
            b"filenames": [f"fixture_{split}_{i}.png".encode() for i in range(n)],
            b"batch_label": label + b" batch 1 of 1",
            b"fine_labels": [int(c) for c in fine],
            b"coarse_labels": [int(c) % 20 for c in fine],
            b"data": rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8),
        }
        with (folder / split).open("wb") as f:
            pickle.dump(batch, f, protocol=2)
    meta = {
        b"fine_label_names": [f"class_{c:03d}".encode() for c in range(num_classes)],
        b"coarse_label_names": [f"superclass_{c:02d}".encode() for c in range(20)],
    }
    with (folder / "meta").open("wb") as f:
        pickle.dump(meta, f, protocol=2)
    return folder


def _random_crop(images: Tensor, pad: int, flip: bool, generator: torch.Generator) -> Tensor:
    """Crop each image at a random offset from its zero-padded copy; optionally flip it.

    One gather for the whole batch: per-sample row and column indices into the padded batch.
    """
    n, c, h, w = images.shape
    dev = generator.device
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=dev)  # (N,)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=dev)  # (N,)
    cols = torch.arange(w, device=dev).expand(n, w)  # (N, W)
    if flip:
        mirror = torch.rand(n, generator=generator, device=dev) < 0.5  # (N,)
        cols = torch.where(mirror[:, None], cols.flip(-1), cols)
    rows = (oy[:, None] + torch.arange(h, device=dev)).to(images.device)  # (N, H)
    cols = (ox[:, None] + cols).to(images.device)  # (N, W)
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))  # (N, C, H+2p, W+2p)
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    chans = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[batch, chans, rows[:, None, :, None], cols[:, None, None, :]]  # (N, C, H, W)


def _random_shift1d(signals: Tensor, pad: int, generator: torch.Generator) -> Tensor:
    """Shift each (C, L) signal by a random offset in [-pad, pad], zero-filled; one gather."""
    n, c, length = signals.shape
    dev = generator.device
    offset = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=dev)  # (N,)
    idx = (offset[:, None] + torch.arange(length, device=dev)).to(signals.device)  # (N, L)
    padded = torch.nn.functional.pad(signals, (pad, pad))  # (N, C, L+2p)
    return padded.gather(2, idx[:, None, :].expand(n, c, length))  # (N, C, L)


def augment(images: Tensor, kind: str, generator: torch.Generator) -> Tensor:
    """Augment a batch; deterministic given the generator's state.

    Padding is with zeros of the (already normalised) images, i.e. the dataset's mean colour.

    Args:
        images: (N, C, H, W) batch, or (N, C, L) signals for "none" and "shift1d".
        kind: "none" (identity: the input itself is returned), "shift" (random shift by up to
            1 pixel, for digits), "crop_flip" (random crop with 4-pixel padding and a
            horizontal flip with p = 0.5: the standard CIFAR augmentation) or "shift1d" (a 1-D
            signal shifted by up to 2 samples, for MNIST-1D).
        generator: source of randomness; its device is where offsets are drawn.

    Returns:
        The augmented batch, shaped as `images`.
    """
    if kind == "none":
        return images
    if (images.dim() == 3) != (kind in AUGMENT_1D):
        raise ValueError(f"augmentation {kind!r} does not apply to a batch of shape {tuple(images.shape)}")
    if kind == "shift1d":
        return _random_shift1d(images, pad=2, generator=generator)
    if kind == "shift":
        return _random_crop(images, pad=1, flip=False, generator=generator)
    if kind == "crop_flip":
        return _random_crop(images, pad=4, flip=True, generator=generator)
    raise ValueError(f"unknown augmentation {kind!r}; valid: {', '.join(AUGMENT_KINDS)}")


def cutout(images: Tensor, generator: torch.Generator) -> Tensor:
    """Cutout (DeVries & Taylor, 2017): zero one window of each sample at a random centre, clipped
    at the border; half the side of an image (an (H/2)×(W/2) square, as the 16-pixel hole on 32×32
    CIFAR), or a quarter of a signal's length L (the same share of the input, a quarter). Zero is
    the dataset's mean (inputs are normalised). Deterministic given the generator's state.

    Args:
        images: (N, C, H, W) images or (N, C, L) signals.
        generator: source of the centres; its device is where they are drawn.
    """
    dev, n, sizes = generator.device, images.shape[0], tuple(images.shape[2:])
    holes = [max(1, size // 2) for size in sizes] if len(sizes) == 2 else [max(1, sizes[0] // 4)]
    window = torch.ones(n, *sizes, dtype=torch.bool, device=dev)  # (N, H, W) or (N, L)
    for dim, (size, hole) in enumerate(zip(sizes, holes, strict=True)):
        first = torch.randint(0, size, (n,), generator=generator, device=dev) - hole // 2  # (N,) centre − hole/2
        pos = torch.arange(size, device=dev)
        inside = (pos >= first[:, None]) & (pos < first[:, None] + hole)  # (N, size)
        window &= inside.view(n, *(size if d == dim else 1 for d in range(len(sizes))))
    return images * (~window).to(images.device, images.dtype).unsqueeze(1)


def batches(
    n: int,
    batch_size: int,
    generator: torch.Generator,
    shuffle: bool = True,
    drop_last: bool = False,
) -> Iterator[Tensor]:
    """Yield (B,) int64 index tensors covering range(n) once.

    Args:
        n: dataset size.
        batch_size: B; the last batch may be smaller unless `drop_last`.
        generator: CPU generator, source of the permutation (unused when not shuffling).
        shuffle: random order (a fresh permutation from the generator) or 0..n-1.
        drop_last: skip a final batch smaller than `batch_size`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]
