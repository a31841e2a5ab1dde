"""Shared fixtures: an isolated cache (teachers, checkpoints) and results folder per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def _kdbench_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["KDBENCH_CACHE"] = str(tmp_path_factory.mktemp("kdbench-cache"))


@pytest.fixture
def results(tmp_path: Path) -> Path:
    return tmp_path / "results"

