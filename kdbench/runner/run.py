"""`kdbench run`: resolve, train, evaluate, write one record."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import Any

import torch

from kdbench.methods.base import MethodContext
from kdbench.metrics import metric
from kdbench.records import SCHEMA_VERSION, record_path, write_record
from kdbench.runner import checkpoint
from kdbench.runner.distributed import World, barrier, init_from_env
from kdbench.runner.env import (
    count_flops,
    count_params,
    environment,
    hardware,
    peak_memory_mb,
    resolve_device,
)
from kdbench.runner.spec import RunOptions, RunSpec, resolve
from kdbench.runner.teacher_cache import TeacherCache, why_online
from kdbench.runner.teachers import Teacher, get_teacher
from kdbench.runner.train import FitResult, Job, NonFiniteLoss, fit_stages, probe_outputs


def run(options: RunOptions) -> tuple[dict[str, Any], Path]:
    """Train and evaluate one (task, protocol, method, seed); returns the record and its path."""
    spec = resolve(options)
    device = resolve_device(options.device)
    world = init_from_env(device)  # under torchrun: one run on world.size processes
    main = world is None or world.is_main
    torch.use_deterministic_algorithms(True, warn_only=True)
    adapter = spec.adapter_cls(spec.protocol, options.data_root, device)
    adapter.configure(spec.method_cls.needs | spec.method_cls.requests)
    teacher = None
    if spec.method_cls.teacher == "external":
        teacher = get_teacher(adapter, spec.teacher_seed, options.teacher)
        if main and teacher.trained and not teacher.trained.get("cached"):
            write_teacher_record(spec, adapter, teacher, device)
        adapter.attach_teacher(teacher.model)
    torch.manual_seed(options.seed)
    student = adapter.build_model("student", spec.method_cls.needs).to(device)
    ctx = MethodContext(
        probe_outputs(adapter, student),
        probe_outputs(adapter, teacher.model) if teacher else None,
        adapter.train_size, int(spec.protocol.card["train"]["epochs"]))
    method = spec.method_cls(spec.config, ctx).to(device)
    if "teacher_pass" in spec.method_cls.needs and teacher is not None:
        method.prepare(lambda: adapter.teacher_pass(teacher.model))
    run_dir = checkpoint.cache_dir() / "runs" / spec.protocol.task / spec.protocol.name / \
        options.method / f"seed{options.seed}-{run_key(spec, teacher, world)[:16]}"
    job = Job(adapter, student, method, teacher.model if teacher else None,
              spec.protocol.card["train"], options.seed, run_dir / "last.pt",
              label=f"{options.method} seed {options.seed}", world=world,
              precision=_precision(spec, device))
    teacher_outputs = _attach_cache(job, spec, teacher, world)
    error = None
    try:
        result = fit_stages(job)
        metrics = adapter.evaluate(student)
    except NonFiniteLoss as e:
        result, metrics, error = FitResult(), {}, str(e)
    student_sha = None
    if error is None:
        if main:  # every rank holds the same weights; rank 0 saves them and writes the record
            student_sha = checkpoint.save(run_dir / "student.pt", {
                "arch": adapter.arch_name("student"), "state_dict": student.state_dict(),
                "method": method.state_dict()})
            (run_dir / "last.pt").unlink(missing_ok=True)
        if result.history:
            result.history[-1]["metrics"] = metrics
    record = {
        "schema_version": SCHEMA_VERSION, "task": spec.protocol.task, "tier": spec.protocol.tier,
        "protocol": {"name": spec.protocol.name, "sha256": spec.protocol.sha256},
        "method": {"name": options.method, "teacher": spec.method_cls.teacher,
                   "hparams": spec.hparams},
        "seed": options.seed,
        "student": {"arch": adapter.arch_name("student"), "params": count_params(student),
                    "flops": count_flops(student, adapter.example_input()),
                    "checkpoint_sha256": student_sha},
        "teacher": teacher.info if teacher else None,
        "metrics": _metrics(adapter.primary_metric, metrics),
        "history": result.history,
        "cost": {"train_seconds": result.train_seconds, "peak_memory_mb": peak_memory_mb(device),
                 "device": device.type, "hardware": hardware(device)},
        "environment": environment(),
        "status": "ok" if error is None else "failed", "error": error,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "spec": {**_spec(spec, device, world), "teacher_outputs": teacher_outputs,
                 "precision": job.precision or "fp32"}, **_evaluation(adapter),
    }
    path = record_path(options.results, spec.protocol.task, spec.protocol.name, options.method,
                       options.seed)
    if main:
        write_record(path, record)
    barrier(world)
    return record, path


def _precision(spec: RunSpec, device: torch.device) -> str | None:
    """bf16 autocast where the card allows it (`train.amp: bf16`) and the run is on a GPU."""
    return "bf16" if spec.protocol.get("train.amp") == "bf16" and device.type == "cuda" else None


def _attach_cache(job: Job, spec: RunSpec, teacher: Teacher | None, world: World | None) -> dict[str, Any] | None:
    """Read the teacher's logits from the shared cache where that cannot change the result."""
    if teacher is None:
        return None
    reason = why_online(job.adapter, spec.method_cls)
    if reason is not None:
        print(f"teacher outputs computed online: {reason}", file=sys.stderr)
        return {"mode": "online", "reason": reason}
    topk = spec.protocol.get("train.teacher_cache_topk")
    key = checkpoint.sha256_json({
        "teacher": teacher.info.get("checkpoint_sha256"), "protocol": spec.protocol.sha256,
        "overrides": {k: v for k, v in spec.options.sets.items() if not k.startswith("method.")},
        "seed": spec.options.seed, "world": [world.rank, world.size] if world else None,
        "precision": job.precision, "topk": topk})
    job.teacher_cache = TeacherCache(
        checkpoint.cache_dir() / "teacher-outputs" / spec.protocol.task / key[:24], int(topk) if topk else None)
    return {"mode": "cached", "topk": int(topk) if topk else None}


def run_key(spec: RunSpec, teacher: Teacher | None, world: World | None = None) -> str:
    """What a checkpoint belongs to: a resumed run must be the very same run."""
    return checkpoint.sha256_json({**({"world_size": world.size} if world else {}),
        "protocol": spec.protocol.sha256, "overrides": spec.protocol.overrides,
        "method": spec.options.method, "hparams": spec.hparams, "seed": spec.options.seed,
        "teacher": teacher.info.get("checkpoint_sha256") if teacher else None})


def failure_record(options: RunOptions, error: str, traceback_tail: str | None = None) -> Path:
    """The `failed` record of a run that raised before it could write its own (sweeps)."""
    spec = resolve(options)
    device = resolve_device(options.device)
    student = spec.protocol.card["student"]
    record = {
        "schema_version": SCHEMA_VERSION, "task": spec.protocol.task, "tier": spec.protocol.tier,
        "protocol": {"name": spec.protocol.name, "sha256": spec.protocol.sha256},
        "method": {"name": options.method, "teacher": spec.method_cls.teacher, "hparams": spec.hparams},
        "seed": options.seed,
        "student": {"arch": str(student["arch"] if isinstance(student, dict) else student),
                    "params": None, "flops": None, "checkpoint_sha256": None},
        "teacher": None, "metrics": _metrics(spec.adapter_cls.primary_metric, {}), "history": [],
        "cost": {"train_seconds": 0.0, "peak_memory_mb": None, "device": device.type,
                 "hardware": hardware(device)},
        "environment": environment(), "status": "failed", "error": error, "traceback": traceback_tail,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "spec": _spec(spec, device),
    }
    path = record_path(options.results, spec.protocol.task, spec.protocol.name, options.method, options.seed)
    write_record(path, record)
    return path


def write_teacher_record(spec: RunSpec, adapter: Any, teacher: Teacher, device: torch.device) -> Path:
    """The teacher's own row: a record with method `teacher` (it is a table row, not a method)."""
    trained = teacher.trained or {"history": [], "train_seconds": 0.0}
    info = dict(teacher.info)
    metrics = info.pop("metrics", {})
    info.pop("source", None)
    record = {
        "schema_version": SCHEMA_VERSION, "task": spec.protocol.task, "tier": spec.protocol.tier,
        "protocol": {"name": spec.protocol.name, "sha256": spec.protocol.sha256},
        "method": {"name": "teacher", "teacher": "none", "hparams": {}},
        "seed": spec.teacher_seed, "student": info, "teacher": None,
        "metrics": _metrics(adapter.primary_metric, metrics),
        "history": trained["history"],
        "cost": {"train_seconds": trained["train_seconds"],
                 "peak_memory_mb": peak_memory_mb(device), "device": device.type,
                 "hardware": hardware(device)},
        "environment": environment(), "status": "ok", "error": None,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "spec": _spec(spec, device), **_evaluation(adapter),
    }
    path = record_path(spec.options.results, spec.protocol.task, spec.protocol.name, "teacher",
                       spec.teacher_seed)
    write_record(path, record)
    print(f"teacher record: {path}", file=sys.stderr)
    return path


def _evaluation(adapter: Any) -> dict[str, Any]:
    """The record's optional `evaluation` field, from adapters that describe how they score
    (translation: split, decoding settings, sacrebleu signatures)."""
    info = getattr(adapter, "evaluation_info", None)
    return {"evaluation": info()} if info is not None else {}


def _metrics(primary: str, values: dict[str, float]) -> dict[str, Any]:
    return {"primary": primary, "direction": metric(primary).direction, "values": values}


def _spec(spec: RunSpec, device: torch.device, world: World | None = None) -> dict[str, Any]:
    return {"overrides": dict(spec.options.sets), "world_size": world.size if world else 1,
            "global_batch": int(spec.protocol.card["train"]["batch_size"]),
            "device": device.type, "teacher_seed": spec.teacher_seed}


def train_teacher(options: RunOptions) -> tuple[dict[str, Any], Path]:
    """`kdbench teacher`: the card's teacher for teacher seed `options.seed`, and its record."""
    options.sets = {**options.sets, "teacher.seed": options.seed}
    spec = resolve(options)
    device = resolve_device(options.device)
    torch.use_deterministic_algorithms(True, warn_only=True)
    adapter = spec.adapter_cls(spec.protocol, options.data_root, device)
    teacher = get_teacher(adapter, spec.teacher_seed, options.teacher)
    path = write_teacher_record(spec, adapter, teacher, device)
    from kdbench.records import read_record

    return read_record(path), path
