"""The sweep executors resolve through the one Registry (kdbench.registry)."""

from __future__ import annotations

import pytest

from kdbench.registry import UnknownName
from kdbench.runner.executors import EXECUTORS, run_local, run_ray, run_slurm


def test_executors_are_registered_by_name() -> None:
    assert list(EXECUTORS) == ["local", "ray", "slurm"]
    assert (EXECUTORS["local"], EXECUTORS["ray"], EXECUTORS["slurm"]) == (run_local, run_ray, run_slurm)


def test_an_unknown_executor_is_one_line_listing_them() -> None:
    with pytest.raises(UnknownName) as err:
        EXECUTORS["kubernetes"]
    assert str(err.value) == "unknown executor 'kubernetes'; valid: local, ray, slurm"
