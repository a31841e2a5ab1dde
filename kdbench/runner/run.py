"""`kdbench run`: resolve, train, evaluate on val and test, write one record."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from kdbench.cache import cache_dir, sha256_json
from kdbench.errors import UsageError
from kdbench.methods.base import MethodContext
from kdbench.outputs import Outputs
from kdbench.records import read_record, record_path, write_record
from kdbench.runner import checkpoint, data_fraction
from kdbench.runner.cache_budget import choose, epoch_rows, estimate
from kdbench.runner.distributed import SOLO, World, init_from_env
from kdbench.runner.env import count_flops, count_params, gpus_used, method_params, resolve_device
from kdbench.runner.online import build_online_teacher, finish_online_teacher
from kdbench.runner.record import Outcome, build_record
from kdbench.runner.spec import RunOptions, RunSpec, refuse_existing, resolve
from kdbench.runner.teacher_cache import FORMAT, TeacherCache, why_online
from kdbench.runner.teachers import Teacher, get_teacher
from kdbench.runner.train import (
    FitResult,
    Job,
    NonFiniteLoss,
    clean_checkpoints,
    epoch_seed,
    fit_stages,
    probe_outputs,
)


def prepare(options: RunOptions) -> tuple[RunSpec, torch.device]:
    """Everything checked before any work: the spec, the device, an existing record, threads."""
    spec = resolve(options)
    refuse_existing(spec.record_path, options.overwrite)
    device = resolve_device(options.device)
    check_writable(spec.record_path)
    torch.set_num_threads(int(spec.protocol.typed.train.threads))  # the card fixes it: CPU results depend on it
    torch.use_deterministic_algorithms(True, warn_only=True)
    return spec, device


def evaluate_both(adapter: Any, model: torch.nn.Module) -> tuple[dict[str, Any], dict[str, Any]]:
    """(val, test) metrics of the final model; tables report test, anything chosen uses val."""
    return adapter.evaluate(model, "val"), adapter.evaluate(model, "test")


def run(options: RunOptions) -> tuple[dict[str, Any], Path]:
    """Train and evaluate one (task, protocol, method, seed); returns the record and its path."""
    spec, device = prepare(options)
    options = spec.options  # the method by its registered name, should `options` name an alias
    world = init_from_env(device)  # under torchrun: one run on world.size processes
    main = world.is_main
    adapter = spec.adapter_cls(spec.protocol, options.data_root, device)
    adapter.configure(spec.method_cls.needs | spec.method_cls.requests)
    teacher = None
    if spec.method_cls.teacher == "external":
        teacher = get_teacher(adapter, spec.teacher_seed, options.teacher)
        if main and teacher.trained is not None:
            ensure_teacher_record(spec, adapter, teacher, device)
        adapter.attach_teacher(teacher.model)
    online, online_info = None, None  # the online_teacher service: the card's teacher arch, fresh, trained here
    if spec.method_cls.teacher == "online":
        online, online_info = build_online_teacher(adapter, options.seed)
    train_subset = data_fraction.apply(adapter, options.seed)  # the student's subset; the teacher saw all
    torch.manual_seed(options.seed)
    student = adapter.build_model("student", spec.method_cls.needs).to(device)
    teacher_model = teacher.model if teacher is not None else online  # frozen, or trained online
    ctx = MethodContext(
        probe_outputs(adapter, student, spec.method_cls),
        probe_outputs(adapter, teacher_model) if teacher_model is not None else None,
        adapter.train_size, int(spec.protocol.typed.train.epochs), adapter.train_classes())
    method = spec.method_cls(spec.config, ctx).to(device)
    if "teacher_pass" in spec.method_cls.needs and teacher is not None:
        method.prepare(lambda: adapter.teacher_pass(teacher.model))
    run_dir = cache_dir() / "runs" / spec.protocol.task / spec.protocol.key / \
        options.method / f"seed{options.seed}-{run_key(spec, teacher, world)[:16]}"
    job = Job(adapter, student, method, teacher_model,
              spec.protocol.card["train"], options.seed, run_dir / "last.pt",
              label=f"{options.method} seed {options.seed}", world=world,
              precision=_precision(spec, device), primary=spec.primary_metric)
    teacher_outputs = _attach_cache(job, spec, teacher, world, ctx.teacher)
    outcome = Outcome()
    try:
        result = fit_stages(job)
        outcome.val, outcome.test = evaluate_both(adapter, student)
    except NonFiniteLoss as e:
        result, outcome.error = FitResult(), str(e)
    outcome.history, outcome.train_seconds = result.history, result.train_seconds
    student_sha = None
    if outcome.error is None:
        if main:  # every rank holds the same weights; rank 0 saves them and writes the record
            student_sha = checkpoint.save(run_dir / "student.pt", {
                "arch": adapter.arch_name("student"), "state_dict": student.state_dict(),
                "method": method.state_dict()})
        if online is not None and online_info is not None:  # its final weights (online-teacher.pt), val and test
            online_info = finish_online_teacher(adapter, online, online_info, run_dir, save=main)
        if result.history:
            result.history[-1]["metrics"] = outcome.val
    model_info = {"arch": adapter.arch_name("student"), "params": count_params(student),
                  "flops": count_flops(student, adapter.example_input()),
                  "method_params": method_params(method, student), "checkpoint_sha256": student_sha}
    gpus = gpus_used(device)
    if device.type == "cuda":  # every rank's GPU, in rank order
        gpus = world.gather_lists(gpus)
    record = build_record(spec, outcome, device=device, world_size=world.size,
                          precision=job.precision, student=model_info, teacher=online_info or _teacher_entry(teacher),
                          teacher_outputs=teacher_outputs, evaluation=_evaluation(adapter), gpus=gpus,
                          train_subset=train_subset)
    if main:
        write_record(spec.record_path, record)
        if outcome.error is None:  # only now: a rerun after a failed write resumes instead of training again
            clean_checkpoints(run_dir)
    world.barrier()
    return record, spec.record_path


#: A results folder needs at least this much free space for a record.
RECORD_SPACE = 1 << 20


def check_writable(record: Path) -> None:
    """Before any work: the record's folder can be created and written and has room for a record
    (a file is created and removed in its nearest existing folder; nothing else is made).

    Raises:
        UsageError: one line naming the folder and why not.
    """
    folder = Path(record).parent
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"cannot write records under {folder}: {existing} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".kdbench-write-test.", dir=existing)
        os.close(fd)
        os.unlink(probe)
        free = shutil.disk_usage(existing).free
    except OSError as e:
        raise UsageError(f"cannot write records under {folder}: {e.strerror or e} (choose another --results "
                         "or fix its permissions)") from None
    if free < RECORD_SPACE:
        raise UsageError(f"cannot write records under {folder}: {free} bytes free, a record needs up to "
                         f"{RECORD_SPACE >> 20} MiB")


def _teacher_entry(teacher: Teacher | None) -> dict[str, Any] | None:
    return None if teacher is None else dict(teacher.info)


def _precision(spec: RunSpec, device: torch.device) -> str | None:
    """bf16 autocast where the card allows it (`train.amp: bf16`) and the run is on a GPU."""
    return "bf16" if spec.protocol.typed.train.amp == "bf16" and device.type == "cuda" else None


def _attach_cache(job: Job, spec: RunSpec, teacher: Teacher | None, world: World,
                  probe: Outputs | None) -> dict[str, Any] | None:
    """Read the teacher's logits from the shared cache where that cannot change the result, in the
    mode the budget allows (kdbench.runner.cache_budget); says which on one line."""
    if teacher is None or probe is None:
        return None
    reason = why_online(job.adapter, spec.method_cls)
    if reason is not None:
        print(f"teacher: run on every batch, not read from the teacher-output cache: {reason}", file=sys.stderr)
        return {"mode": "online", "topk": None, "reason": reason, "epoch_bytes": None, "budget_bytes": None}
    train = spec.protocol.typed.train
    size = world.size
    batch = int(train.batch_size)

    def rows(epoch: int) -> dict[str, int]:
        generator = torch.Generator().manual_seed(epoch_seed(spec.options.seed, epoch))
        return epoch_rows(job.adapter, probe, batch, generator, size)

    choice = choose(estimate(probe, rows(0)), train.teacher_cache_topk, train.teacher_cache_budget_mib,
                    int(train.epochs))
    if world.is_main:
        print(choice.line, file=sys.stderr)
    if choice.mode != "online":
        key = sha256_json({
            "teacher": teacher.info.get("checkpoint_sha256"), "protocol": spec.protocol.sha256,
            "seed": spec.options.seed, "world": [world.rank, world.size] if world != SOLO else None,  # key as before
            "precision": job.precision, "topk": choice.topk, "format": FORMAT})
        job.teacher_cache = TeacherCache(
            cache_dir() / "teacher-outputs" / spec.protocol.task / key[:24], choice.topk, rows)
    return choice.entry()


def run_key(spec: RunSpec, teacher: Teacher | None, world: World = SOLO) -> str:
    """What a checkpoint belongs to: a resumed run must be the very same run (one process's key
    names no world, as it always has)."""
    return sha256_json({**({"world_size": world.size} if world != SOLO else {}),
        "protocol": spec.protocol.sha256, "method": spec.options.method, "hparams": spec.hparams,
        "seed": spec.options.seed, "teacher": teacher.info.get("checkpoint_sha256") if teacher else None})


def failure_record(options: RunOptions, error: str, traceback_tail: str | None = None) -> Path:
    """The `failed` record of a run that raised before it could write its own (sweeps)."""
    spec = resolve(options)
    try:
        device = resolve_device(options.device)
    except UsageError:  # a sweep's own process recording a GPU item it cannot see (Slurm login node, Ray head)
        if options.device != "cuda":
            raise
        device = torch.device("cuda")  # cost.hardware says it is unknown, peak memory is null
    student = {"arch": str(spec.protocol.get("student.arch")), "params": None, "flops": None,
               "checkpoint_sha256": None}
    record = build_record(spec, Outcome(error=error, traceback=traceback_tail), device=device, student=student)
    write_record(spec.record_path, record)
    return spec.record_path


def ensure_teacher_record(spec: RunSpec, adapter: Any, teacher: Teacher, device: torch.device,
                          overwrite: bool = False) -> Path:
    """The teacher's own table row (method `teacher`), written where its students' records go
    unless a record of this very teacher checkpoint is there already."""
    path = record_path(spec.options.results, spec.protocol.task, spec.protocol.key, "teacher", spec.teacher_seed)
    sha = teacher.info["checkpoint_sha256"]
    if path.is_file() and not overwrite:
        try:
            existing = read_record(path)["student"].get("checkpoint_sha256")
        except (OSError, ValueError, KeyError, TypeError):
            existing = None
        if existing != sha:
            print(f"kdbench: warning: {path} describes another teacher checkpoint ({str(existing)[:12]}); "
                  f"this run uses {sha[:12]} and leaves that record as it is", file=sys.stderr)
        return path
    trained = teacher.trained or {"history": [], "train_seconds": 0.0}
    info = dict(teacher.info)
    metrics = info.pop("metrics", {})
    info.pop("source", None)
    outcome = Outcome(test=metrics.get("test", {}), val=metrics.get("val", {}), history=trained["history"],
                      train_seconds=trained["train_seconds"])
    record = build_record(spec, outcome, device=device, student=info, evaluation=_evaluation(adapter),
                          as_teacher=True)
    write_record(path, record)
    print(f"teacher record: {path}", file=sys.stderr)
    return path


def _evaluation(adapter: Any) -> dict[str, Any]:
    """What the adapter says about how it scored the test split (translation: decoding settings,
    sacrebleu signatures), if anything."""
    return dict(adapter.evaluation_info("test"))


def train_teacher(options: RunOptions) -> tuple[dict[str, Any], Path]:
    """`kdbench teacher`: the card's teacher for teacher seed `options.seed`, and its record."""
    spec = resolve(options)
    spec.teacher_seed_override = options.seed  # a seed of the card's teacher, not an ablation of the card
    path = record_path(options.results, spec.protocol.task, spec.protocol.key, "teacher", spec.teacher_seed)
    refuse_existing(path, options.overwrite)
    device = resolve_device(options.device)
    check_writable(path)
    torch.set_num_threads(int(spec.protocol.typed.train.threads))
    torch.use_deterministic_algorithms(True, warn_only=True)
    adapter = spec.adapter_cls(spec.protocol, options.data_root, device)
    teacher = get_teacher(adapter, spec.teacher_seed, options.teacher)
    ensure_teacher_record(spec, adapter, teacher, device, overwrite=True)
    return read_record(path), path
