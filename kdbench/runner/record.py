"""One builder for every record a run writes (ok, failed, teacher): the frozen run spec is its
provenance, embedded verbatim (the effective card, the method with all hyperparameters, seed,
world size, global batch, precision, threads, the teacher used), beside the adapter's
evaluation version, both splits' metrics and the software and CPU it ran on."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import torch

from kdbench.metrics import metric
from kdbench.record_checks import cut
from kdbench.records import SCHEMA_VERSION
from kdbench.runner.env import environment, hardware, peak_memory_mb
from kdbench.runner.online import ONLINE_SOURCE
from kdbench.runner.spec import RunSpec

#: A failed record's error and traceback tail are cut to fit the schema's bounds.
ERROR_CHARS, TRACEBACK_CHARS = 4000, 19000


@dataclass
class Outcome:
    """What a run produced; the rest of its record comes from its spec."""

    test: dict[str, float | None] = field(default_factory=dict)
    val: dict[str, float | None] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0
    error: str | None = None
    traceback: str | None = None


def teacher_ref(spec: RunSpec, info: dict[str, Any] | None) -> dict[str, Any] | None:
    """The spec's `teacher`: which checkpoint the student learnt from, its record and metric. An online
    teacher (source "trained online", kdbench.runner.online) names the seed it was initialised under
    and its final weights, and has no record of its own; without final weights (a failed run) there is
    no checkpoint to name, and the spec's teacher is None."""
    if info is None:
        return None
    primary = spec.primary_metric
    metrics = info.get("metrics") or {}
    given = info.get("source") == "given"
    if info.get("source") == ONLINE_SOURCE:
        if info.get("checkpoint_sha256") is None:
            return None
        return {"seed": int(info["seed"]), "sha256": info["checkpoint_sha256"], "record": None,
                "metric": {"name": primary, "val": (metrics.get("val") or {}).get(primary),
                           "test": (metrics.get("test") or {}).get(primary)}}
    return {"seed": None if given else spec.teacher_seed, "sha256": info["checkpoint_sha256"],
            "record": None if given else teacher_record_relpath(spec),
            "metric": {"name": primary, "val": (metrics.get("val") or {}).get(primary),
                       "test": (metrics.get("test") or {}).get(primary)}}


def teacher_record_relpath(spec: RunSpec) -> str:
    return f"{spec.protocol.task}/{spec.protocol.key}/teacher/seed{spec.teacher_seed}.json"


def build_record(spec: RunSpec, outcome: Outcome, *, device: torch.device, world_size: int = 1,
                 precision: str | None = None, student: dict[str, Any] | None = None,
                 teacher: dict[str, Any] | None = None, teacher_outputs: dict[str, Any] | None = None,
                 evaluation: dict[str, Any] | None = None, as_teacher: bool = False,
                 gpus: list[dict[str, Any]] | None = None,
                 train_subset: dict[str, Any] | None = None) -> dict[str, Any]:
    """The record of one run (or, `as_teacher`, of the card's teacher as a table row); `gpus`: the
    GPUs it trained on, one per rank (`env.gpus_used`), kept as `cost.gpus` when there are any;
    `train_subset`: the training samples the student kept under the card's `train.data_fraction`
    (kdbench.runner.data_fraction.apply), recorded as `spec.train_subset` (null: all of them, and
    always for a teacher's record)."""
    protocol = spec.protocol
    primary = spec.primary_metric
    method = {"name": "teacher", "teacher": "none", "hparams": {}} if as_teacher else \
        {"name": spec.options.method, "teacher": spec.method_cls.teacher, "hparams": spec.hparams}
    student = student or {"arch": "unknown", "params": None, "flops": None, "checkpoint_sha256": None}
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "task": protocol.task, "tier": protocol.tier,
        "protocol": {"name": protocol.name, "key": protocol.key, "sha256": protocol.sha256,
                     "shipped": protocol.is_shipped},
        "method": method,
        "seed": spec.teacher_seed if as_teacher else spec.options.seed,
        "student": student, "teacher": None if as_teacher else teacher,
        "metrics": {"primary": primary, "direction": metric(primary).direction,
                    "values": outcome.test, "val": outcome.val},
        "history": outcome.history,
        "cost": {"train_seconds": outcome.train_seconds, "peak_memory_mb": peak_memory_mb(device),
                 "device": device.type, "hardware": hardware(device)},
        "environment": environment(),
        "status": "ok" if outcome.error is None else "failed",
        "error": None if outcome.error is None else cut(outcome.error, ERROR_CHARS),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "evaluation": {**(evaluation or {}), "version": spec.adapter_cls.evaluation_version, "split": "test"},
        "spec": {
            "card": protocol.card, "method": {"name": method["name"], "hparams": method["hparams"]},
            "seed": spec.teacher_seed if as_teacher else spec.options.seed,
            "overrides": dict(spec.options.sets), "world_size": world_size,
            "global_batch": int(protocol.typed.train.batch_size), "precision": precision or "fp32",
            "device": device.type, "threads": torch.get_num_threads(), "teacher_seed": spec.teacher_seed,
            "teacher": None if as_teacher else teacher_ref(spec, teacher),
            "teacher_outputs": teacher_outputs,
            "train_subset": None if as_teacher else train_subset,
        },
    }
    if gpus:
        record["cost"]["gpus"] = gpus
    if outcome.traceback is not None:
        record["traceback"] = outcome.traceback[-TRACEBACK_CHARS:]
    return record
