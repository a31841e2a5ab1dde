"""Shared pieces of the reliability suite: hostile files, a cache of each test's own."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

SMOKE = ["--task", "classification", "--protocol", "smoke"]


class Payload:
    """Unpickled, it would run `touch <marker>` (os.system): loading it must never happen."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def malicious(path: Path, marker: Path, kind: str = "torch") -> Path:
    """A hostile checkpoint: a torch archive (`torch`) or a plain pickle (`pickle`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "torch":
        torch.save({"state_dict": Payload(marker), "epoch": 1}, path)
    else:
        path.write_bytes(pickle.dumps(Payload(marker)))
    return path


def damaged(path: Path, kind: str) -> Path:
    """A file that is no checkpoint: empty, random bytes, a truncated archive, or text."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "random":
        path.write_bytes(os.urandom(4096))
    elif kind == "truncated":
        torch.save({"state_dict": {"w": torch.zeros(1000)}}, path)
        path.write_bytes(path.read_bytes()[:700])
    else:
        path.write_text("not a checkpoint\n")
    return path


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A KDBENCH_CACHE of this test's own (teachers and run checkpoints)."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("KDBENCH_CACHE", str(folder))
    return folder


def one_line(err: str) -> str:
    """The single line a refused command printed (asserting it is one, with no traceback)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]
