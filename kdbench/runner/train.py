"""The train/eval loop. Adapters return Outputs, methods return named terms; this only sums,
logs and steps (STYLE 3). Every epoch ends in an atomic checkpoint; a run restarted with the
same spec resumes from it and ends with the same metrics, because each epoch's data order and
random state derive from (seed, epoch) alone."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from kdbench.adapters.base import Adapter
from kdbench.methods.base import Method, RunState
from kdbench.runner import checkpoint
from kdbench.runner.ema import EMA
from kdbench.runner.optim import build_optimizer, build_schedule


class NonFiniteLoss(RuntimeError):
    """A loss became NaN or infinite; the message names the step and the terms."""


@dataclass
class Job:
    """One training job: a student (with its method) and, optionally, a frozen teacher."""

    adapter: Adapter
    student: nn.Module
    method: Method
    teacher: nn.Module | None
    train: dict[str, Any]  # the card's `train` section
    seed: int
    checkpoint: Path | None
    label: str = "train"


@dataclass
class FitResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0
    resumed_from: int = 0


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + 17) % (2**63 - 1)


def fit(job: Job) -> FitResult:
    """Train `job.student` (and the method's own modules) for the card's epochs."""
    cfg = job.train
    epochs, batch_size = int(cfg["epochs"]), int(cfg["batch_size"])
    steps_per_epoch = job.adapter.steps_per_epoch(batch_size)
    params = [p for p in (*job.student.parameters(), *job.method.parameters()) if p.requires_grad]
    optimizer = build_optimizer(cfg["optimizer"], params)
    schedule = build_schedule(optimizer, cfg.get("schedule", {}), steps_per_epoch, epochs)
    clip = cfg.get("grad_clip")
    ema_cfg = cfg.get("ema") or {}
    ema = EMA(job.student, float(ema_cfg["decay"]), int(ema_cfg.get("warmup_steps", 2000))) if ema_cfg else None
    result = FitResult()
    if job.checkpoint is not None and job.checkpoint.is_file():
        state = checkpoint.load(job.checkpoint, job.adapter.device)
        job.student.load_state_dict(state["student"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        job.method.load_state_dict(state["method"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        result = FitResult(state["history"], state["train_seconds"], state["epoch"])
    if job.teacher is not None:
        job.teacher.eval()
    bar = tqdm(range(result.resumed_from, epochs), desc=job.label, unit="epoch",
               initial=result.resumed_from, total=epochs, leave=False, disable=None)
    for epoch in bar:
        started = time.perf_counter()
        terms = _train_epoch(job, optimizer, schedule, epoch, epochs, steps_per_epoch, clip, ema)
        seconds = time.perf_counter() - started
        result.train_seconds += seconds
        entry: dict[str, Any] = {"epoch": epoch, "loss": terms.pop("loss"), "terms": terms,
                                 "lr": optimizer.param_groups[0]["lr"], "seconds": seconds}
        if _should_eval(cfg, epoch, epochs):
            entry["metrics"] = job.adapter.evaluate(ema.model if ema else job.student)
        result.history.append(entry)
        bar.set_postfix(loss=f"{entry['loss']:.3f}", **{
            k: f"{v:.2f}" for k, v in entry.get("metrics", {}).items()
            if k == job.adapter.primary_metric and v is not None})
        if job.checkpoint is not None:
            checkpoint.save(job.checkpoint, {
                "epoch": epoch + 1, "student": job.student.state_dict(),
                "method": job.method.state_dict(), "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(), "history": result.history,
                "train_seconds": result.train_seconds, "ema": ema.state_dict() if ema else None})
    bar.close()
    if ema is not None:  # what is evaluated and saved from here on is the averaged model
        job.student.load_state_dict(ema.model.state_dict())
    return result


def _should_eval(cfg: dict[str, Any], epoch: int, epochs: int) -> bool:
    every = int(cfg.get("eval_every", 0) or 0)
    return every > 0 and ((epoch + 1) % every == 0) and epoch + 1 < epochs


def _train_epoch(
    job: Job, optimizer: torch.optim.Optimizer, schedule: Any, epoch: int, epochs: int,
    steps_per_epoch: int, clip: float | None, ema: EMA | None = None,
) -> dict[str, float]:
    torch.manual_seed(epoch_seed(job.seed, epoch))  # dropout and other in-model randomness
    generator = torch.Generator().manual_seed(epoch_seed(job.seed, epoch))
    job.student.train()
    job.method.train()
    sums: dict[str, float] = defaultdict(float)
    count = 0
    steps = epochs * steps_per_epoch
    for i, batch in enumerate(job.adapter.train_batches(int(job.train["batch_size"]), generator)):
        state = RunState(epoch, epochs, epoch * steps_per_epoch + i, steps)
        student = job.adapter.forward(job.student, batch)
        teacher = None
        if job.teacher is not None:
            with torch.no_grad():
                teacher = job.adapter.align(student, job.adapter.forward(job.teacher, batch))
        terms = _terms(job, student, teacher, state)
        loss = torch.stack(list(terms.values())).sum()
        if not torch.isfinite(loss):
            values = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())
            raise NonFiniteLoss(f"non-finite loss at epoch {epoch}, step {state.step} "
                                f"(batch {i} of the epoch): {values}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(
                [p for g in optimizer.param_groups for p in g["params"]], float(clip))
        optimizer.step()
        schedule.step()
        if ema is not None:
            ema.update(job.student)
        detached = {k: v.detach() for k, v in terms.items()}
        job.method.after_step(student.detach(), detached, state)
        for k, v in detached.items():
            sums[k] += float(v)
        sums["loss"] += float(loss.detach())
        count += 1
    return {k: v / max(count, 1) for k, v in sums.items()}


def _terms(job: Job, student: Any, teacher: Any, state: RunState) -> dict[str, Tensor]:
    progress = state.step / max(state.steps, 1)
    terms: dict[str, Tensor] = {}
    for name, value in job.adapter.task_loss(student).items():
        weight = job.method.task_weight(name, progress)
        if weight:
            terms[f"task/{name}"] = weight * value
    terms.update(job.method.loss(student, teacher, progress, state))
    if not terms:
        raise RuntimeError("no loss terms: the method and task produced nothing to optimise")
    return terms



def probe_outputs(adapter: Adapter, model: nn.Module) -> Any:
    """Detached eval-mode Outputs on a fixed small batch (sizes methods' own modules)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        batch = next(iter(adapter.train_batches(2, torch.Generator().manual_seed(0))))
        outputs = adapter.forward(model, batch).detach()
    model.train(was_training)
    return outputs
