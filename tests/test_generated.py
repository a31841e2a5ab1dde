"""kdbench.adapters.generated: a generated dataset is written once, whole, and replaced on new parameters."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from kdbench.adapters.generated import materialise, read_done


def test_written_once_reused_and_replaced(tmp_path: Path) -> None:
    calls: list[int] = []

    def write(n: int) -> Callable[[Path], None]:
        def go(folder: Path) -> None:
            calls.append(n)
            (folder / "data.txt").write_text(str(n))
        return go

    root = tmp_path / "set"
    assert materialise(root, {"n": 1}, write(1)) == root
    assert materialise(root, {"n": 1}, write(1)) == root
    assert calls == [1] and read_done(root) == {"n": 1}
    materialise(root, {"n": 2}, write(2))
    assert calls == [1, 2] and (root / "data.txt").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]  # no temporary folder left


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    def broken(folder: Path) -> None:
        (folder / "half.txt").write_text("x")
        raise ValueError("bad parameters")

    with pytest.raises(ValueError, match="bad parameters"):
        materialise(tmp_path / "set", {"n": 1}, broken)
    assert list(tmp_path.iterdir()) == []
    assert read_done(tmp_path / "set") is None
