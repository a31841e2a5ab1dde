"""`kdbench.RecordHook`: a kdbench result record at the end of mmengine training.

    custom_hooks = [dict(type="kdbench.RecordHook", results="results")]

writes `results/<task>/<protocol>+<config hash 8>/<method>/seed<N>.json`, valid under kdbench's schema
(`kdbench validate`), with tier `external`: the protocol is the training config, named
`mm-<config file stem>` (or `protocol=`) and identified by `config_hash` — the sha256 of the config
without the keys that only say where and how verbosely a run goes (`RUN_LOCAL_KEYS`), so seeds of
one config share it and any change of model, data, schedule or method changes it. The method is
the distiller's kdbench method (`baseline` for a plain mmdet / mmpose model), the metrics are the
test loop's (run once after training; `metrics.val` holds the last validation's), renamed to
kdbench's metric names (`coco/bbox_mAP` → `ap`), and the environment names the mmcv, mmengine,
mmdet and mmpose versions.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import re
import time
from pathlib import Path
from typing import Any

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from kdbench.cache import sha256_json
from kdbench.errors import UsageError
from kdbench.integrations.distill import Distiller, arch_name
from kdbench.integrations.registry import HOOKS
from kdbench.metrics import METRICS
from kdbench.records import SCHEMA_VERSION, record_path, write_record
from kdbench.runner import checkpoint
from kdbench.runner.env import count_params, environment, hardware, peak_memory_mb

#: Config keys that do not change what is trained or how it is evaluated.
RUN_LOCAL_KEYS = ("work_dir", "launcher", "resume", "load_from", "randomness", "log_level", "log_processor",
                  "visualizer", "vis_backends", "default_hooks", "env_cfg", "custom_hooks", "filename")

#: OpenMMLab metric keys (after the evaluator's "<prefix>/") → kdbench metric names.
METRIC_NAMES = {
    "bbox_mAP": "ap", "bbox_mAP_50": "ap50", "bbox_mAP_75": "ap75",
    "bbox_mAP_s": "ap_small", "bbox_mAP_m": "ap_medium", "bbox_mAP_l": "ap_large",
    "AP": "ap", "AP .5": "ap50", "AP .75": "ap75", "AP (M)": "ap_medium", "AP (L)": "ap_large", "AR": "ar",
}

SCOPE_TASKS = {"mmdet": "detection", "mmpose": "pose"}
PACKAGES = ("mmcv", "mmengine", "mmdet", "mmpose")


def config_hash(cfg: Any) -> str:
    """sha256 of the config as sorted JSON, without `RUN_LOCAL_KEYS`."""
    data = {k: v for k, v in dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg).items()
            if k not in RUN_LOCAL_KEYS}
    return sha256_json(json.loads(json.dumps(data, sort_keys=True, default=str)))


def mm_versions() -> dict[str, str | None]:
    """The imported version of each OpenMMLab package (None where it is not installed)."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = str(importlib.import_module(name).__version__)
        except ImportError:
            versions[name] = None
    return versions


def kdbench_metrics(values: dict[str, Any]) -> dict[str, float | None]:
    """OpenMMLab evaluator results under kdbench's metric names (others are left out); COCO's −1
    (no ground truth in that area range) becomes None, as in kdbench's own detection metrics."""
    out: dict[str, float | None] = {}
    for key, value in values.items():
        name = METRIC_NAMES.get(key.split("/", 1)[-1])
        if name is not None and name in METRICS and isinstance(value, int | float):
            out[name] = None if value < 0 else float(value)
    return out


@HOOKS.register_module()
class RecordHook(Hook):
    """Write one kdbench record when training ends (see the module docstring).

    Args:
        results: the results folder.
        task: kdbench task name; default from the distiller, else the config's default_scope.
        protocol: the record's protocol name; default `mm-<config file stem>`.
    """

    priority = "VERY_LOW"

    def __init__(self, results: str = "results", task: str | None = None, protocol: str | None = None) -> None:
        self.results, self.task, self.protocol = Path(results), task, protocol
        self.path: Path | None = None
        self._start = 0.0
        self._losses: list[dict[str, float]] = []
        self.history: list[dict[str, Any]] = []
        self.metrics: dict[str, float | None] = {}
        self.test_metrics: dict[str, float | None] = {}

    def after_test_epoch(self, runner: Any, metrics: dict[str, float] | None = None) -> None:
        self.test_metrics = kdbench_metrics(metrics or {})

    def before_train(self, runner: Any) -> None:
        self._start, self._losses, self.history, self.metrics = time.perf_counter(), [], [], {}

    def after_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None, outputs: Any = None) -> None:
        if outputs:
            self._losses.append({k: float(v.detach()) if hasattr(v, "detach") else float(v)
                                 for k, v in outputs.items() if "loss" in k})

    def after_val_epoch(self, runner: Any, metrics: dict[str, float] | None = None) -> None:
        if not self._start:  # a validation outside training
            return
        self.metrics = kdbench_metrics(metrics or {})
        entry: dict[str, Any] = {"epoch": len(self.history), "loss": None,
                                 "seconds": time.perf_counter() - self._start, "metrics": self.metrics,
                                 "iter": int(runner.iter)}
        if self._losses:
            keys = {k for row in self._losses for k in row}
            means = {k: sum(row.get(k, 0.0) for row in self._losses) / len(self._losses) for k in sorted(keys)}
            entry["loss"] = means.pop("loss", None)
            entry["terms"] = means
        self._losses = []
        self.history.append(entry)

    def after_train(self, runner: Any) -> None:
        train_seconds = time.perf_counter() - self._start
        if not self.metrics:
            if runner.val_loop is None:
                raise UsageError("kdbench.RecordHook needs a val_dataloader and val_evaluator for the record's metrics")
            runner.val_loop.run()
        if not self.metrics:
            raise UsageError("kdbench.RecordHook: the evaluator gave none of the metrics kdbench knows "
                             f"({', '.join(sorted(set(METRIC_NAMES)))}); mmdet's CocoMetric gives none when "
                             "the model predicts no box above test_cfg.score_thr")
        if runner.cfg.get("test_dataloader") is None or runner.cfg.get("test_evaluator") is None:
            raise UsageError("kdbench.RecordHook needs a test_dataloader and test_evaluator: the record reports "
                             "test, the val split is what training monitored")
        runner.test_loop.run()
        if not self.test_metrics:
            raise UsageError("kdbench.RecordHook: the test evaluator gave none of the metrics kdbench knows")
        self.path = self.write(runner, train_seconds)
        runner.logger.info(f"kdbench record: {self.path}")

    def write(self, runner: Any, train_seconds: float) -> Path:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        device = next(model.parameters()).device
        info = model.record_info() if isinstance(model, Distiller) else {
            "method": {"name": "baseline", "teacher": "none", "hparams": {}}, "export": model,
            "student_arch": arch_name(dict(runner.cfg.model)), "teacher": None}
        task = self.task or getattr(model, "task", None) or SCOPE_TASKS.get(str(runner.cfg.get("default_scope")))
        if task is None:
            raise UsageError("kdbench.RecordHook cannot tell the task; set task='detection' or 'pose'")
        filename = runner.cfg.filename
        protocol = self.protocol or f"mm-{Path(filename).stem if filename else runner.experiment_name}"
        protocol = re.sub(r"[^a-z0-9_-]", "-", protocol.lower())[:64]
        digest = config_hash(runner.cfg)
        export = info["export"]
        student_sha = checkpoint.save(Path(runner.work_dir) / "kdbench_student.pth",
                                      {"arch": info["student_arch"], "state_dict": export.state_dict()})
        batch = int(runner.cfg.train_dataloader.get("batch_size", 1))
        primary = "ap"
        teacher = info["teacher"]
        env = {**environment(), "openmmlab": mm_versions()}
        record = {
            "schema_version": SCHEMA_VERSION, "task": task, "tier": "external",
            "protocol": {"name": protocol, "key": f"{protocol}+{digest[:8]}", "sha256": digest, "shipped": False},
            "method": info["method"], "seed": int(runner.seed),
            "student": {"arch": info["student_arch"], "params": count_params(export), "flops": None,
                        "checkpoint_sha256": student_sha},
            "teacher": info["teacher"],
            "metrics": {"primary": primary, "direction": METRICS[primary].direction, "values": self.test_metrics,
                        "val": self.metrics},
            "history": self.history,
            "cost": {"train_seconds": train_seconds, "peak_memory_mb": peak_memory_mb(device),
                     "device": device.type, "hardware": hardware(device)},
            "environment": env,
            "status": "ok", "error": None,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "evaluation": {"version": 1, "split": "test", "evaluator": "mmengine test loop (test_evaluator)"},
            "spec": {"card": json.loads(json.dumps(dict(runner.cfg.to_dict()), default=str)),
                     "method": {"name": info["method"]["name"], "hparams": info["method"]["hparams"]},
                     "seed": int(runner.seed), "overrides": {}, "world_size": int(runner.world_size),
                     "global_batch": batch * runner.world_size, "precision": "fp32", "device": device.type,
                     "threads": env["threads"], "config": str(filename) if filename else None,
                     "teacher": None if not (teacher and teacher.get("checkpoint_sha256")) else {
                         "seed": None, "sha256": teacher["checkpoint_sha256"], "record": None, "metric": {}},
                     "teacher_outputs": None},
        }
        path = record_path(self.results, task, record["protocol"]["key"], info["method"]["name"], int(runner.seed))
        write_record(path, record)
        return path


__all__ = ["RecordHook", "config_hash", "kdbench_metrics", "mm_versions"]
