"""Helpers for the OpenMMLab integration tests: skip outside the [mm] environment, run a config."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import pytest

CONFIGS = Path(__file__).parent / "configs"


def require(*modules: str) -> None:
    """Skip the calling test module unless mmcv's compiled ops and `modules` import (with
    KDBENCH_REQUIRE_MM=1, as in CI's [mm] step, fail instead)."""
    for name in ("mmcv._ext", "mmengine", *modules):
        try:
            importlib.import_module(name)
        except Exception as e:  # ImportError, or an OpenMMLab version check failing
            if os.environ.get("KDBENCH_REQUIRE_MM") == "1":
                raise
            pytest.skip(f"needs the [mm] environment (scripts/install_mm.sh): cannot import {name}: {e}",
                        allow_module_level=True)


def load(config: str, work_dir: Path, **overrides: Any) -> Any:
    """The config (environment placeholders filled now), writing under `work_dir`."""
    from mmengine.config import Config

    cfg = Config.fromfile(str(CONFIGS / config))
    cfg.work_dir = str(work_dir)
    if overrides:
        cfg.merge_from_dict(overrides)
    return cfg


def train(config: str, work_dir: Path, **overrides: Any) -> Any:
    """Train the config with mmengine's Runner; returns the runner."""
    from mmengine.runner import Runner

    runner = Runner.from_cfg(load(config, work_dir, **overrides))
    runner.train()
    return runner


def record_hook(runner: Any) -> Any:
    from kdbench.integrations.records import RecordHook

    return next(h for h in runner.hooks if isinstance(h, RecordHook))
