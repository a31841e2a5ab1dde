"""The single-process World (kdbench.runner.distributed.SOLO): every collective does nothing, with
no process group, so the train loop calls them unconditionally; what a run without torchrun gets."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.distributed as dist

from kdbench.outputs import Head, Outputs
from kdbench.runner.distributed import SOLO, World, current, init_from_env, shard
from kdbench.runner.train import Job


def test_one_process_is_solo_and_no_process_group_is_made(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_from_env(torch.device("cpu")) is SOLO and current() == SOLO
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert init_from_env(torch.device("cpu")) is SOLO
    assert not (dist.is_available() and dist.is_initialized())
    assert World(0, 1) == SOLO and SOLO.is_main
    assert Job.__dataclass_fields__["world"].default is SOLO  # a Job's world unless torchrun made one


def test_solo_collectives_hand_back_what_they_are_given() -> None:
    @dataclasses.dataclass
    class Batch:
        x: torch.Tensor

    batch = Batch(torch.arange(6.0).view(3, 2))
    assert SOLO.shard(batch) is batch  # not cut, not rebuilt
    assert shard(batch, World(0, 2)).x.shape == (1, 2)  # a world of two cuts it

    p = torch.nn.Parameter(torch.ones(3))
    grad = torch.tensor([1.0, 2.0, 3.0])
    p.grad = grad
    SOLO.average_gradients([p])
    assert p.grad is grad

    assert SOLO.all_finite(torch.tensor(1.5)) and not SOLO.all_finite(torch.tensor(float("nan")))
    terms = {"a": torch.tensor(0.1), "b": torch.tensor(0.2)}
    loss = torch.stack(list(terms.values())).sum()
    total, same = SOLO.global_losses(loss, terms)
    assert same is terms and total == float(loss) and isinstance(total, float)  # the loss itself, not re-summed

    outputs = Outputs(heads={"cls": Head(torch.zeros(2, 3), kind="categorical")}, ids=torch.arange(2))
    assert SOLO.gather_heads(outputs) is outputs
    items = ["gpu0"]
    assert SOLO.gather_lists(items) is items
    SOLO.barrier()
