"""Atomic checkpoints, loaded without running code (content hashes and the cache folder: kdbench.cache).

Every checkpoint kdbench reads — `--teacher`, cached teachers, a run's `last.pt` and `stage*.pt`
— is loaded with `torch.load(weights_only=True)`: tensors, containers and plain numbers only, so
a pickle whose `__reduce__` would run a command is refused, not run. A file that is not a
checkpoint raises `CheckpointError`, one line naming the file and what it holds. What kdbench
saves is plain for that loader (numpy scalars become Python numbers) and holds no wall-clock
time where a sha256 is taken, so the same weights give the same bytes and the same hash.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdbench.errors import UsageError
from kdbench.records import atomic_write_bytes, printable


class CheckpointError(UsageError):
    """A file that cannot be loaded as a kdbench checkpoint or state dict (one line: the file and
    what it holds)."""


def plain(obj: Any) -> Any:
    """`obj` with numpy scalars and arrays turned into Python numbers and lists (what the
    weights-only loader reads); containers without any are returned as they are (a state dict
    keeps its `_metadata`)."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, dict):
        items = {k: plain(v) for k, v in obj.items()}
        return obj if all(items[k] is v for k, v in obj.items()) else type(obj)(items)
    if isinstance(obj, (list, tuple)):
        values = [plain(v) for v in obj]
        return obj if all(a is b for a, b in zip(values, obj, strict=True)) else type(obj)(values)
    return obj


def save(path: Path, payload: dict[str, Any]) -> str:
    """torch.save atomically (mode 0644); returns the file's sha256. The bytes depend on the
    payload alone: keep wall-clock times out of a payload whose hash identifies it."""
    buffer = io.BytesIO()
    torch.save(plain(payload), buffer)
    data = buffer.getvalue()
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint (a dict), loaded weights-only; `.safetensors` files give their state dict.

    Raises:
        CheckpointError: no such file, or one that is not a checkpoint (empty, truncated, a
            pickle that would import code, text, a tensor or list rather than a dict, ...).
    """
    path = Path(path)
    if not path.is_file():
        what = "a directory" if path.is_dir() else "no such file"
        raise CheckpointError(f"{printable(path)}: {what}, not a checkpoint")
    if path.suffix == ".safetensors":
        return {"state_dict": _load_safetensors(path, map_location)}
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error below says it all
            warnings.simplefilter("ignore", UserWarning)
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ValueError, ...
        raise CheckpointError(f"{printable(path)}: not a kdbench checkpoint or state dict: "
                              f"{describe(path, e)}") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{printable(path)}: holds a {type(payload).__name__}, not a checkpoint "
                              "(a state dict or a dict holding one)")
    return payload


def _load_safetensors(path: Path, map_location: str | torch.device) -> dict[str, Any]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise CheckpointError(f"{printable(path)}: reading .safetensors needs the safetensors package") from None
    try:
        return dict(load_file(str(path), device=str(map_location)))
    except Exception as e:
        raise CheckpointError(f"{printable(path)}: not a readable safetensors file: "
                              f"{str(e).splitlines()[0][:160] if str(e) else type(e).__name__}") from None


def describe(path: Path, error: BaseException | None = None) -> str:
    """What a file that failed to load holds, in a few words (for the one-line error)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    text = str(error or "")
    found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", text)
    if found:
        return f"a pickle that would import and call {found.group(1)}: refused, not run"
    if size == 0:
        return "an empty file"
    if head.startswith(b"PK\x03\x04"):
        if "weights" in text.lower() and "zip" not in text.lower():
            return "a torch archive holding objects other than tensors and plain values: refused, not run"
        return f"a damaged or truncated torch zip archive ({size} bytes)"
    if head[:1] == b"\x80" and len(head) > 1 and head[1] <= 5:
        return f"a pickle (protocol {head[1]}) that is not a torch checkpoint: refused, not run"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return f"text, not a checkpoint ({size} bytes)"
    return f"{size} bytes of no checkpoint format (starting {head[:8].hex()})"


def move_aside(path: Path) -> Path:
    """Rename a damaged checkpoint to `<name>.corrupt` (replacing an older one) and return the new path."""
    aside = path.with_name(path.name + ".corrupt")
    os.replace(path, aside)
    return aside
