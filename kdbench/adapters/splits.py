"""Split helpers shared by the adapters: the split check, seeded held-out subsets, per-class
draws (the data-fraction service's and the long-tailed training split's), and COCO ground-truth
files for a subset of an annotation file's images."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from kdbench.errors import UsageError

EVAL_SPLITS: tuple[str, ...] = ("val", "test")


def check_split(split: str, valid: Sequence[str], task: str) -> str:
    """`split` itself, or a UsageError `unknown split 'x' for <task>; valid: val, test`."""
    if split not in valid:
        raise UsageError(f"unknown split {split!r} for {task}; valid: {', '.join(valid)}")
    return split


def held_out(ids: Sequence[int], n: int, seed: int, what: str = "images") -> list[int]:
    """`n` of `ids` drawn without replacement by a generator seeded with `seed`, sorted.

    The draw depends only on the sorted set of ids, `n` and `seed` (not on the order given).

    Raises:
        ValueError: `n` is negative or leaves nothing to train on.
    """
    pool = np.array(sorted({int(i) for i in ids}), dtype=np.int64)
    if n < 0 or n >= len(pool):
        raise ValueError(f"cannot hold out {n} of {len(pool)} {what}: need 0 ≤ n < {len(pool)}")
    picked = np.random.default_rng(seed).permutation(len(pool))[:n]
    return sorted(int(i) for i in pool[picked])


def stratified_holdout(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of `n` samples nearly stratified by label, drawn with a generator seeded by `seed`.

    The samples are shuffled, then ordered round-robin over classes (each class in its shuffled
    order) and the first `n` are taken: class counts differ by at most one from proportional
    where every class has enough members. Returned sorted.
    """
    labels = np.asarray(labels)
    if n < 0 or n >= len(labels):
        raise ValueError(f"cannot hold out {n} of {len(labels)} samples: need 0 ≤ n < {len(labels)}")
    order = np.random.default_rng(seed).permutation(len(labels))
    shuffled = labels[order]
    _, cls, counts = np.unique(shuffled, return_inverse=True, return_counts=True)
    rank = np.zeros(len(labels), dtype=np.int64)  # each sample's rank within its class
    for c in range(len(counts)):
        members = np.flatnonzero(cls == c)
        rank[members] = np.arange(len(members))
    # proportional round-robin: a member's position is its rank over its class's size
    position = (rank + 0.5) / counts[cls]
    picked = order[np.lexsort((cls, position))[:n]]
    return np.sort(picked)


def class_members(classes: Tensor, num_classes: int | None = None) -> list[Tensor]:
    """Positions (int64) of each class's samples in `classes` (n,), class by class in increasing
    order: the classes present, or 0 .. num_classes − 1 (empty groups included) when given."""
    classes = classes.cpu()
    present = torch.arange(num_classes) if num_classes is not None else torch.unique(classes, sorted=True)
    return [torch.nonzero(classes == c).flatten() for c in present]


def first_of_permutation(members: Tensor, count: int, generator: torch.Generator | None) -> Tensor:
    """The first `count` of `members` in the order of one `torch.randperm` drawn from `generator`."""
    return members[torch.randperm(len(members), generator=generator)[:count]]


def long_tail_counts(n_max: int, num_classes: int, ratio: float) -> list[int]:
    """Per-class sizes of an exponentially long-tailed split: n_c = ⌊n_max · ρ^(−c/(C−1))⌋, c = 0 .. C−1,
    so class 0 keeps n_max and class C−1 n_max/ρ (ρ ≥ 1 the imbalance ratio, largest over smallest).

    The CIFAR-LT recipe of Cui et al. ("Class-Balanced Loss Based on Effective Number of Samples",
    CVPR 2019) as coded by Cao et al.'s LDAM-DRW (`imbalance_cifar.py` `get_img_num_per_cls`, imb_type
    'exp', with imb_factor = 1/ρ and `int()` truncation), the file MDCS ships unchanged
    (fistyee/MDCS `data_loader/imbalance_cifar.py` at 1a1d54e).
    """
    if ratio < 1:
        raise ValueError(f"the imbalance ratio must be ≥ 1 (largest over smallest class), got {ratio}")
    if num_classes == 1:
        return [int(n_max)]
    return [int(n_max * ratio ** (-c / (num_classes - 1))) for c in range(num_classes)]


def long_tail_indices(classes: Tensor, num_classes: int, ratio: float, seed: int) -> tuple[Tensor, list[int]]:
    """The kept positions (sorted int64) of a long-tailed subset of a training split, and the per-class counts.

    n_max is the smallest class's size in `classes` (every class can then supply its n_c,
    `long_tail_counts`); class c keeps the first n_c of its members in the order of a permutation
    drawn, class by class in increasing order, from a `torch.Generator` seeded with `seed`
    (LDAM-DRW shuffles each class's indices with `np.random.seed(0)` and keeps the first n_c).

    Raises:
        ValueError: a class would keep no sample (ρ too large for the split's size).
    """
    groups = class_members(classes, num_classes)
    n_max = min(len(g) for g in groups)
    counts = long_tail_counts(n_max, num_classes, ratio)
    if min(counts) < 1:
        raise ValueError(f"imbalance {ratio} over {num_classes} classes of at most {n_max} training samples "
                         f"each leaves class {counts.index(0)} empty (n_c = ⌊n_max·ρ^(−c/(C−1))⌋); "
                         "choose a smaller ratio or more training samples")
    generator = torch.Generator().manual_seed(seed)
    kept = [first_of_permutation(g, n, generator) for g, n in zip(groups, counts, strict=True)]
    return torch.sort(torch.cat(kept)).values, counts


def coco_subset_file(coco: dict[str, Any], source: Path, image_ids: Collection[int], folder: Path) -> Path:
    """A COCO json holding only `image_ids` of `coco` (read from `source`) and their annotations.

    Written once into `folder` under a name from the source file (path, size, mtime) and the ids,
    atomically (a temporary file renamed into place), so concurrent writers are safe.
    """
    keep = {int(i) for i in image_ids}
    stat = Path(source).stat()
    key = hashlib.sha256(json.dumps([str(Path(source).resolve()), stat.st_size, stat.st_mtime_ns,
                                     sorted(keep)]).encode()).hexdigest()[:16]
    out = Path(folder) / f"{Path(source).stem}-subset-{key}.json"
    if out.is_file():
        return out
    subset = {k: v for k, v in coco.items() if k not in ("images", "annotations")}
    subset["images"] = [im for im in coco["images"] if int(im["id"]) in keep]
    subset["annotations"] = [a for a in coco["annotations"] if int(a["image_id"]) in keep]
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(subset, f)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out
