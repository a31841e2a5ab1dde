"""Split helpers shared by the adapters: the split check, seeded held-out subsets, and COCO
ground-truth files for a subset of an annotation file's images."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np

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
