"""The teacher-output cache's memory-mapped files: a memmap round trip equals the in-RAM path (every
step kept, concatenated, np.save'd: the cache before issue #21) bit for bit, in full and top-k
modes, through growth and page release; a crash mid-write leaves nothing a later run reads; a
damaged published epoch is refused, recomputed and replaced; a full disk leaves the run unchanged."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kdbench.outputs import Head, Outputs
from kdbench.runner import cache_files, teacher_cache
from kdbench.runner.cache_files import HEADER_BYTES, ArrayWriter, DamagedCache, npy_header, open_array
from kdbench.runner.teacher_cache import TeacherCache, expand_topk

V = 37


def _steps(n: int = 9, seed: int = 0) -> list[Outputs]:
    """Teacher outputs of varying shapes: a (B, T, V) token head and a (B, V) class head."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        b, t = 3 + i % 4, 2 + (i * 5) % 7
        out.append(Outputs(heads={
            "token": Head(torch.randn(b, t, V, generator=g), kind="categorical"),
            "cls": Head(torch.randn(b, 11, generator=g) * 4, kind="categorical")}))
    return out


def _in_ram(steps: list[Outputs], topk: int | None, folder: Path) -> list[Outputs]:
    """The cache's write path as it was (commit ffb9256): each step's arrays kept in lists, then
    np.concatenate and np.save at the epoch's end; returns what the writing run trained on."""
    pending: dict[str, list[np.ndarray]] = {}
    seen_steps = []
    for step in steps:
        heads = {}
        for name, head in step.heads.items():
            flat = head.logits.detach().float().reshape(-1, head.logits.shape[-1]).cpu()
            if topk is None:
                parts, seen = {f"{name}.logits": flat.numpy()}, flat
            else:
                values, index = torch.log_softmax(flat, -1).topk(min(topk, flat.shape[-1]), -1)
                parts = {f"{name}.values": values.numpy(), f"{name}.index": index.int().numpy()}
                seen = expand_topk(values, index, flat.shape[-1])
            heads[name] = Head(seen.reshape(head.logits.shape), kind=head.kind)
            for k, v in parts.items():
                pending.setdefault(k, []).append(v)
        seen_steps.append(Outputs(heads=heads))
    folder.mkdir(parents=True)
    for key, arrays in pending.items():
        np.save(folder / f"{key}.npy", np.concatenate(arrays))
    return seen_steps


def _write(root: Path, steps: list[Outputs], topk: int | None, rows: dict[str, int] | None = None) -> list[Outputs]:
    cache = TeacherCache(root, topk, (lambda epoch: rows) if rows is not None else None)
    cache.start_epoch(0)
    assert not cache.hit
    seen = [cache.add(s) for s in steps]
    cache.finish_epoch()
    return seen


def _read(root: Path, steps: list[Outputs], topk: int | None) -> list[Outputs]:
    cache = TeacherCache(root, topk)
    cache.start_epoch(0)
    assert cache.hit
    return [cache.teacher(i, s) for i, s in enumerate(steps)]


def _same(a: list[Outputs], b: list[Outputs]) -> None:
    for x, y in zip(a, b, strict=True):
        for name in x.heads:
            assert torch.equal(x.heads[name].logits, y.heads[name].logits), name


@pytest.mark.parametrize("topk", [None, 5])
@pytest.mark.parametrize("plan", ["exact", "small", "none"])
def test_memmap_round_trip_equals_the_in_ram_path_bit_for_bit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, topk: int | None, plan: str) -> None:
    monkeypatch.setattr(cache_files, "WINDOW", 4096)  # release pages after every few rows
    steps = _steps()
    old_seen = _in_ram(steps, topk, tmp_path / "old")
    exact = {name: sum(int(np.prod(s.heads[name].logits.shape[:-1])) for s in steps) for name in ("token", "cls")}
    rows = {"exact": exact, "small": {"token": 5, "cls": 1}, "none": None}[plan]  # small, none: the files grow
    new_seen = _write(tmp_path / "new", steps, topk, rows)
    _same(old_seen, new_seen)  # the writing run trains on the same teacher
    _same(old_seen, _read(tmp_path / "new", steps, topk))  # and so does every reading run
    for old in sorted((tmp_path / "old").glob("*.npy")):
        new = np.load(tmp_path / "new" / "epoch0" / old.name)
        ref = np.load(old)
        assert new.dtype == ref.dtype and new.shape == ref.shape
        assert new.tobytes() == ref.tobytes()
        assert (tmp_path / "new" / "epoch0" / old.name).stat().st_size == HEADER_BYTES + ref.nbytes
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["epoch0"]  # no temporary folder left


def test_npy_header_is_read_by_numpy(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    data = np.arange(12, dtype=np.int32).reshape(4, 3)
    path.write_bytes(npy_header(data.dtype, data.shape) + data.tobytes())
    assert np.array_equal(np.load(path), data)
    assert len(npy_header(np.dtype(np.float32), (10**12, 10**6))) == HEADER_BYTES
    with pytest.raises(ValueError, match="does not fit"):
        npy_header(np.dtype(np.float32), tuple(range(1, 40)))


def test_writer_file_is_unreadable_until_finished(tmp_path: Path) -> None:
    writer = ArrayWriter(tmp_path / "x.npy", np.dtype(np.float32), (4,), 10)
    writer.write(np.ones((3, 4), np.float32))
    with pytest.raises(ValueError):
        np.load(tmp_path / "x.npy")  # zeros where the header goes: not a .npy file
    with pytest.raises(ValueError, match="expected float32"):
        writer.write(np.ones((3, 4), np.float64))
    entry = writer.finish()
    assert entry["shape"] == [3, 4] and entry["dtype"] == "<f4"
    assert np.array_equal(open_array(tmp_path / "x.npy", entry), np.ones((3, 4), np.float32))


_CRASH = """
import os, sys, torch
from pathlib import Path
from kdbench.outputs import Head, Outputs
from kdbench.runner.teacher_cache import TeacherCache
cache = TeacherCache(Path(sys.argv[1]), None, lambda epoch: {"cls": 64})
cache.start_epoch(0)
for _ in range(3):
    cache.add(Outputs(heads={"cls": Head(torch.randn(8, 16), kind="categorical")}))
os._exit(3)  # killed mid-epoch: no finish, no abort, no cleanup
"""


def test_a_crash_mid_write_leaves_nothing_reusable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "root"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-c", _CRASH, str(root)], env=env, capture_output=True, text=True)
    assert done.returncode == 3, done.stderr
    left = list(root.iterdir())
    assert len(left) == 1 and left[0].name.startswith(".epoch0.")  # only the writer's temporary folder
    for half in left[0].glob("*.npy"):
        with pytest.raises(ValueError):
            np.load(half)  # its files have no header: nothing can read them as arrays
    reader = TeacherCache(root)
    reader.start_epoch(0)
    assert not reader.hit  # a later run computes the epoch instead
    steps = [Outputs(heads={"cls": Head(torch.randn(8, 16), kind="categorical")}) for _ in range(2)]
    _write(root, steps, None)  # a young temporary folder may be a live writer's: kept
    assert sorted(p.name for p in root.iterdir()) == sorted([left[0].name, "epoch0"])
    monkeypatch.setattr(teacher_cache, "STALE_SECONDS", 0.0)
    (root / "epoch0").rename(tmp_path / "published")
    _write(root, steps, None)  # the next writer removes the dead writer's folder
    assert sorted(p.name for p in root.iterdir()) == ["epoch0"]
    _same(steps, _read(root, steps, None))


def test_an_epoch_that_raises_is_not_published(tmp_path: Path) -> None:
    cache = TeacherCache(tmp_path)
    cache.start_epoch(0)
    cache.add(_steps(1)[0])
    cache.abort()  # what train._train_epoch does when a step raises
    assert list(tmp_path.iterdir()) == []
    cache.start_epoch(0)
    assert not cache.hit


@pytest.mark.parametrize("damage", ["truncate", "flip", "meta", "topk"])
def test_a_damaged_epoch_is_refused_recomputed_and_replaced(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str) -> None:
    steps = _steps(4)
    _write(tmp_path, steps, None)
    folder = tmp_path / "epoch0"
    target = folder / "token.logits.npy"
    if damage == "truncate":
        os.truncate(target, target.stat().st_size - 4)
    elif damage == "flip":
        data = bytearray(target.read_bytes())
        data[-1] ^= 1
        target.write_bytes(bytes(data))
    elif damage == "meta":
        (folder / "meta.json").write_text("{not json")
    else:
        meta = json.loads((folder / "meta.json").read_text())
        (folder / "meta.json").write_text(json.dumps({**meta, "topk": 3}))
    cache = TeacherCache(tmp_path)
    cache.start_epoch(0)
    assert not cache.hit
    assert f"teacher cache: {folder} is damaged" in capsys.readouterr().err
    for s in steps:
        cache.add(s)
    cache.finish_epoch()
    _same(steps, _read(tmp_path, steps, None))  # replaced by an intact epoch
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch0"]


def test_open_array_checks_what_meta_says(tmp_path: Path) -> None:
    writer = ArrayWriter(tmp_path / "a.npy", np.dtype(np.float32), (2,), 4)
    writer.write(np.ones((4, 2), np.float32))
    entry = writer.finish()
    for wrong, message in (({"shape": [4, 3]}, "meta.json says"), ({"dtype": "<i4"}, "meta.json says"),
                           ({"sha256": "0" * 64}, "sha256"), ({"sha256": None} | {"shape": None}, "incompletely")):
        with pytest.raises(DamagedCache, match=message):
            open_array(tmp_path / "a.npy", entry | wrong)
    with pytest.raises(DamagedCache, match=r"b\.npy"):
        open_array(tmp_path / "b.npy", entry)


def test_a_full_disk_leaves_the_epoch_unpublished_and_the_run_unchanged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    steps = _steps(5)
    calls = {"n": 0}
    real = cache_files._reserve

    def reserve(fd: int, size: int) -> None:
        calls["n"] += 1
        if calls["n"] > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, size)

    monkeypatch.setattr(cache_files, "_reserve", reserve)
    seen = _write(tmp_path, steps, 4, {"token": 1, "cls": 1})  # the third reservation fails
    _same(_in_ram(steps, 4, tmp_path / "ref"), seen)  # trained on the same top-k teacher all the same
    assert "this epoch is not cached, the run goes on unchanged" in capsys.readouterr().err
    assert not (tmp_path / "epoch0").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".epoch")]
