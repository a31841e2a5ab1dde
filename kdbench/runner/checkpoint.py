"""Atomic checkpoints and content hashes."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import torch

from kdbench.records import atomic_write_bytes


def cache_dir() -> Path:
    """`$KDBENCH_CACHE`, else `~/.cache/kdbench`: teachers and run checkpoints live here."""
    return Path(os.environ.get("KDBENCH_CACHE") or Path.home() / ".cache" / "kdbench")


def save(path: Path, payload: dict[str, Any]) -> str:
    """torch.save atomically; returns the file's sha256."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    return torch.load(path, map_location=map_location, weights_only=False)  # type: ignore[no-any-return]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_json(obj: Any) -> str:
    import json

    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
