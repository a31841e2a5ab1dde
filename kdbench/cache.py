"""Where kdbench caches what it builds, and the content hashes that key it.

Below the adapters and the runner, which both cache (generated datasets, decoded teacher
outputs, trained teachers, run checkpoints) under `cache_dir()` in folders named by a hash of
everything that determines their content (docs/architecture.md, Layers). No torch here:
checkpoints themselves are kdbench.runner.checkpoint's.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def cache_dir() -> Path:
    """`$KDBENCH_CACHE`, else `~/.cache/kdbench`: teachers and run checkpoints live here."""
    return Path(os.environ.get("KDBENCH_CACHE") or Path.home() / ".cache" / "kdbench")


def sha256_file(path: str | Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_json(obj: Any) -> str:
    """The sha256 of `obj` as JSON with sorted keys (anything JSON cannot hold is written as its str)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
