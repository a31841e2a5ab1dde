"""A valid schema-v2 record for tests that need one without training (kdbench.runner.record
builds the real ones)."""

from __future__ import annotations

import copy
from typing import Any

SHA = "0" * 64


def valid_record(**changes: Any) -> dict[str, Any]:
    model = {"arch": "convnet", "params": 10, "flops": 20, "checkpoint_sha256": SHA}
    record: dict[str, Any] = {
        "schema_version": 2, "task": "classification", "tier": "small",
        "protocol": {"name": "small", "key": "small", "sha256": SHA, "shipped": True},
        "method": {"name": "kd", "teacher": "external", "hparams": {"temperature": 4.0}},
        "seed": 0, "student": model, "teacher": model,
        "metrics": {"primary": "top1", "direction": "higher", "values": {"top1": 90.0}, "val": {"top1": 91.0}},
        "history": [{"epoch": 0, "loss": 1.0, "seconds": 0.5}],
        "cost": {"train_seconds": 1.0, "peak_memory_mb": 100.0, "device": "cpu", "hardware": "x"},
        "environment": {"kdbench": "0.1.0", "git_commit": None, "torch": "2", "python": "3.11", "platform": "linux",
                        "cpu": {"model": "test cpu", "flags": ["avx2"]}, "threads": 1},
        "status": "ok", "error": None, "created": "2026-11-28T00:00:00+00:00",
        "evaluation": {"version": 2, "split": "test"},
        "spec": {"card": {"name": "small"}, "method": {"name": "kd", "hparams": {"temperature": 4.0}}, "seed": 0,
                 "overrides": {}, "world_size": 1, "global_batch": 64, "precision": "fp32", "device": "cpu",
                 "threads": 1, "teacher_seed": 0,
                 "teacher": {"seed": 0, "sha256": SHA, "record": "classification/small/teacher/seed0.json",
                             "metric": {"name": "top1", "val": 95.0, "test": 94.0}},
                 "teacher_outputs": None},
    }
    record = copy.deepcopy(record)
    record.update(changes)
    return record
