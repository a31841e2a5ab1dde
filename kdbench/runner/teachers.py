"""External teachers: trained by kdbench once per task, card and teacher seed and cached under a
content hash (smoke, small, medium), or given by path (standard)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from torch import nn

from kdbench.adapters.base import Adapter
from kdbench.cache import cache_dir, sha256_file, sha256_json
from kdbench.methods.base import MethodContext
from kdbench.methods.baseline import Baseline
from kdbench.protocol import Protocol
from kdbench.records import atomic_write_bytes, printable
from kdbench.runner import checkpoint
from kdbench.runner.env import count_flops, count_params
from kdbench.runner.train import Job, fit, probe_outputs


@dataclass
class Teacher:
    model: nn.Module
    info: dict[str, Any]  # the record's `teacher` entry
    trained: dict[str, Any] | None  # history/seconds when trained by this call, else None


def load_state_dict(path: Path) -> dict[str, Any]:
    """A state dict from kdbench's format, mdistiller's `{"model": ...}`, a bare one or a
    `.safetensors` file, loaded weights-only (kdbench.runner.checkpoint.load).

    Raises:
        CheckpointError: the file is not a checkpoint, or holds no tensors.
    """
    payload = checkpoint.load(path)
    for key in ("state_dict", "model"):
        if isinstance(payload.get(key), dict):
            payload = payload[key]
            break
    if not any(isinstance(v, torch.Tensor) for v in payload.values()):
        raise checkpoint.CheckpointError(f"{printable(path)}: holds no tensors (keys: "
                                         f"{', '.join(map(str, list(payload)[:5])) or 'none'}), not a state dict")
    return payload


def check_architecture(model: nn.Module, state: dict[str, Any], arch: str, path: Path) -> None:
    """Raise a one-line CheckpointError when `state` does not fit `model` (the card's teacher
    `arch`): the first missing, unexpected and wrongly shaped keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {list(state[k].shape)} (expected {list(v.shape)})" for k, v in own.items()
              if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != v.shape]
    if not (missing or unexpected or shapes):
        return
    parts = [f"{label} {', '.join(keys[:3])}" + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")
             for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape of", shapes)) if keys]
    raise checkpoint.CheckpointError(
        f"--teacher {printable(path)}: not a checkpoint of this card's teacher {arch} "
        f"({len(own)} tensors): {'; '.join(parts)}")


#: Card sections that cannot change the teacher kdbench trains (the student's, the methods').
NOT_TEACHER = ("student", "methods", "description", "reference", "default", "seeds", "tuning", "name", "tier")


#: Keys of the card's `train` section that cannot change the teacher: the student's training
#: subset (the teacher always trains on the whole training split; kdbench.runner.data_fraction).
NOT_TEACHER_TRAIN = ("data_fraction",)


def teacher_train_section(card: dict[str, Any]) -> dict[str, Any]:
    """The card's `train` section as the teacher inherits it (without NOT_TEACHER_TRAIN)."""
    return {k: v for k, v in card["train"].items() if k not in NOT_TEACHER_TRAIN}


def teacher_key(protocol: Protocol, task: str, seed: int, evaluation_version: int = 0) -> str:
    """What a cached teacher is the teacher of: every effective card field that trains or scores it
    (data, teacher, train with its overrides but without the student's data fraction, ...), the
    teacher seed and the evaluation version."""
    card = {k: v for k, v in protocol.card.items() if k not in NOT_TEACHER}
    if "train" in card:
        card["train"] = teacher_train_section(card)
    return sha256_json({"task": task, "card": card, "seed": seed, "evaluation": evaluation_version})


def teacher_path(protocol: Protocol, task: str, seed: int) -> Path:
    """Where the cached teacher of (card, task, teacher seed) lives."""
    from kdbench.adapters import get_adapter

    version = get_adapter(task).evaluation_version
    return cache_dir() / "teachers" / task / f"{teacher_key(protocol, task, seed, version)}.pt"


def get_teacher(adapter: Adapter, seed: int, given: Path | None) -> Teacher:
    """The frozen teacher of this card: loaded from `given`, from the cache, or trained now."""
    model = adapter.build_model("teacher", frozenset()).to(adapter.device)
    info: dict[str, Any] = {"arch": adapter.arch_name("teacher"), "params": count_params(model),
                            "flops": count_flops(model, adapter.example_input())}
    trained = None
    if given is not None:
        state = load_state_dict(given)
        check_architecture(model, state, info["arch"], given)
        model.load_state_dict(state)
        info |= {"checkpoint_sha256": sha256_file(given), "source": "given"}
        info["metrics"] = {"val": adapter.evaluate(model, "val"), "test": adapter.evaluate(model, "test")}
    else:
        path = teacher_path(adapter.protocol, adapter.task, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):  # two workers of a sweep never train the same teacher
            cached = _cached(model, path, adapter) if path.is_file() else None
            if cached is None:
                trained = _train(adapter, model, seed, path)
                cached = _cached(model, path, adapter)
            assert cached is not None, "a teacher just trained reads back"
        model.load_state_dict(cached)
        meta = _meta(path, adapter, model)
        info |= {"checkpoint_sha256": sha256_file(path), "source": "trained by kdbench",
                 "metrics": meta["metrics"]}
        trained = trained or {"history": meta["history"], "train_seconds": meta["train_seconds"], "cached": True}
    for p in model.parameters():
        p.requires_grad_(False)
    return Teacher(model.eval(), info, trained)


def _train(adapter: Adapter, model: nn.Module, seed: int, path: Path) -> dict[str, Any]:
    card = adapter.protocol.card
    # the card leaves unset keys out; the student's data fraction is not the teacher's: it sees every sample
    train = {**teacher_train_section(card), **(card["teacher"].get("train") or {})}
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
    # The weights alone in the .pt (its sha256 is the teacher's identity: the same weights, the
    # same hash); metrics, history and wall-clock seconds beside it.
    _write_meta(path, {"metrics": metrics, "history": result.history, "train_seconds": result.train_seconds})
    checkpoint.save(path, {"arch": adapter.arch_name("teacher"), "state_dict": model.state_dict()})
    path.with_suffix(".partial.pt").unlink(missing_ok=True)
    return {"history": result.history, "train_seconds": result.train_seconds, "cached": False}


def _cached(model: nn.Module, path: Path, adapter: Adapter) -> dict[str, Any] | None:
    """The cached teacher's state dict, or None after moving a damaged file aside (it is retrained)."""
    try:
        state = checkpoint.load(path, adapter.device)["state_dict"]
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise checkpoint.CheckpointError(f"{path}: not this card's teacher (missing {missing[:3]}, "
                                             f"unexpected {unexpected[:3]})")
        return state  # type: ignore[no-any-return]
    except (checkpoint.CheckpointError, KeyError, TypeError, RuntimeError) as e:
        aside = checkpoint.move_aside(path)
        print(f"kdbench: warning: cached teacher unreadable ({str(e).splitlines()[0][:300]}); moved to "
              f"{aside} and trained again", file=sys.stderr)
        return None


def _meta_path(path: Path) -> Path:
    return path.with_suffix(".json")


def _write_meta(path: Path, meta: dict[str, Any]) -> None:
    atomic_write_bytes(_meta_path(path), json.dumps(checkpoint.plain(meta), allow_nan=False).encode())


def _meta(path: Path, adapter: Adapter, model: nn.Module) -> dict[str, Any]:
    """The cached teacher's metrics, history and seconds (its .json); evaluated again when the file
    is missing or unreadable (the history is then lost)."""
    try:
        meta = json.loads(_meta_path(path).read_text())
        if isinstance(meta, dict) and {"metrics", "history", "train_seconds"} <= set(meta):
            return meta
    except (OSError, ValueError):
        pass
    meta = {"metrics": {"val": adapter.evaluate(model, "val"), "test": adapter.evaluate(model, "test")},
            "history": [], "train_seconds": 0.0}
    _write_meta(path, meta)
    return meta
