"""External teachers: trained by kdbench once per task, card and teacher seed and cached under a
content hash (smoke, small, medium), or given by path (standard)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from torch import nn

from kdbench.adapters.base import Adapter
from kdbench.methods.base import MethodContext
from kdbench.methods.baseline import Baseline
from kdbench.runner import checkpoint
from kdbench.runner.env import count_flops, count_params
from kdbench.runner.protocol import Protocol
from kdbench.runner.train import Job, fit, probe_outputs


@dataclass
class Teacher:
    model: nn.Module
    info: dict[str, Any]  # the record's `teacher` entry
    trained: dict[str, Any] | None  # history/seconds when trained by this call, else None


def load_state_dict(path: Path) -> dict[str, Any]:
    """A state dict from kdbench's format, mdistiller's `{"model": ...}`, or a bare one."""
    payload = checkpoint.load(path)
    for key in ("state_dict", "model"):
        if isinstance(payload, dict) and isinstance(payload.get(key), dict):
            return payload[key]  # type: ignore[no-any-return]
    return payload


#: Card sections that cannot change the teacher kdbench trains (the student's, the methods').
NOT_TEACHER = ("student", "methods", "description", "reference", "default", "seeds", "tuning", "name", "tier")


def teacher_key(protocol: Protocol, task: str, seed: int, evaluation_version: int = 0) -> str:
    """What a cached teacher is the teacher of: every effective card field that trains or scores it
    (data, teacher, train with its overrides, ...), the teacher seed and the evaluation version."""
    card = {k: v for k, v in protocol.card.items() if k not in NOT_TEACHER}
    return checkpoint.sha256_json({"task": task, "card": card, "seed": seed, "evaluation": evaluation_version})


def teacher_path(protocol: Protocol, task: str, seed: int) -> Path:
    """Where the cached teacher of (card, task, teacher seed) lives."""
    from kdbench.adapters import get_adapter

    version = get_adapter(task).evaluation_version
    return checkpoint.cache_dir() / "teachers" / task / f"{teacher_key(protocol, task, seed, version)}.pt"


def get_teacher(adapter: Adapter, seed: int, given: Path | None) -> Teacher:
    """The frozen teacher of this card: loaded from `given`, from the cache, or trained now."""
    model = adapter.build_model("teacher", frozenset()).to(adapter.device)
    info: dict[str, Any] = {"arch": adapter.arch_name("teacher"), "params": count_params(model),
                            "flops": count_flops(model, adapter.example_input())}
    trained = None
    if given is not None:
        model.load_state_dict(load_state_dict(given))
        info |= {"checkpoint_sha256": checkpoint.sha256_file(given), "source": "given"}
        info["metrics"] = {"val": adapter.evaluate(model, "val"), "test": adapter.evaluate(model, "test")}
    else:
        path = teacher_path(adapter.protocol, adapter.task, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):  # two workers of a sweep never train the same teacher
            if not path.is_file():
                trained = _train(adapter, model, seed, path)
        payload = checkpoint.load(path, adapter.device)
        model.load_state_dict(payload["state_dict"])
        info |= {"checkpoint_sha256": checkpoint.sha256_file(path), "source": "trained by kdbench",
                 "metrics": payload["metrics"]}
        trained = trained or {"history": payload["history"],
                              "train_seconds": payload["train_seconds"], "cached": True}
    for p in model.parameters():
        p.requires_grad_(False)
    return Teacher(model.eval(), info, trained)


def _train(adapter: Adapter, model: nn.Module, seed: int, path: Path) -> dict[str, Any]:
    card = adapter.protocol.card
    train = {**card["train"], **(card["teacher"].get("train") or {})}  # the card leaves unset keys out
    print(f"training the {adapter.arch_name('teacher')} teacher once (seed {seed}); "
          f"cached at {path}", file=sys.stderr)
    torch.manual_seed(seed)
    model.load_state_dict(adapter.build_model("teacher", frozenset()).state_dict())
    ctx = MethodContext(probe_outputs(adapter, model), None, adapter.train_size,
                        int(train["epochs"]))
    method = Baseline(Baseline.Config(), ctx)
    job = Job(adapter, model, method, None, train, seed, path.with_suffix(".partial.pt"),
              label="teacher")
    result = fit(job)
    metrics = {"val": adapter.evaluate(model, "val"), "test": adapter.evaluate(model, "test")}
    checkpoint.save(path, {"arch": adapter.arch_name("teacher"), "state_dict": model.state_dict(),
                           "metrics": metrics, "history": result.history,
                           "train_seconds": result.train_seconds})
    path.with_suffix(".partial.pt").unlink(missing_ok=True)
    return {"history": result.history, "train_seconds": result.train_seconds, "cached": False}
