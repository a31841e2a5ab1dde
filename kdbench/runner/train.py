"""The train/eval loop. Adapters return Outputs, methods return named terms; this only sums,
logs and steps (docs/architecture.md, Layers). Every epoch ends in an atomic checkpoint; a run restarted with the
same spec resumes from it and ends with the same metrics, because each epoch's data order and
random state derive from (seed, epoch) alone."""

from __future__ import annotations

import copy
import sys
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from kdbench.adapters.base import Adapter
from kdbench.errors import KDBenchError
from kdbench.methods.base import RUNNER_NEEDS, Method, RunState
from kdbench.outputs import OUTPUT_NEEDS, Outputs
from kdbench.records import printable
from kdbench.runner import checkpoint
from kdbench.runner.distributed import SOLO, World
from kdbench.runner.ema import EMA
from kdbench.runner.online import OnlineTeacher
from kdbench.runner.optim import build_optimizer, build_schedule
from kdbench.runner.teacher_cache import TeacherCache


class NonFiniteLoss(RuntimeError):
    """A loss became NaN or infinite; the message names the step and the terms."""


@dataclass
class Job:
    """One training job: a student (with its method) and, optionally, a frozen teacher."""

    adapter: Adapter
    student: nn.Module
    method: Method
    teacher: nn.Module | None  # frozen; under the online_teacher service the trainable online teacher
    train: dict[str, Any]  # the card's `train` section
    seed: int
    checkpoint: Path | None
    label: str = "train"
    world: World = SOLO  # the student's ranks under `torchrun` (kdbench.runner.distributed); one process: SOLO
    teacher_cache: TeacherCache | None = None  # the teacher's logits read back, not recomputed
    precision: str | None = None  # "bf16": forward and losses under autocast (cards that allow it, on GPU)
    primary: str = ""  # the card's primary metric (shown on the progress bar)
    stop_epoch: int | None = None  # train only the first this many epochs of the card's schedule (None: all)


@dataclass
class FitResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0
    resumed_from: int = 0


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + 17) % (2**63 - 1)


def generation_seed(seed: int, generation: int) -> int:
    """The seed generation `generation` of a `generations` run trains under: the run's own seed for
    generation 0 (its student is the one the run built), and for each later one a seed derived from
    (seed, generation) alone, which fixes its fresh initialisation, data order and in-model randomness."""
    if generation == 0:
        return seed
    return (seed * 1_000_033 + generation * 104_729 + 7_919) % (2**63 - 1)


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
    unknown = job.method.runtime_needs.difference(RUNNER_NEEDS)
    if unknown:  # what the runner serves is RUNNER_NEEDS; anything else would silently be missing
        raise KDBenchError(f"method {job.method.name!r} has runtime_needs {', '.join(sorted(unknown))}, which the "
                           f"runner does not serve (it serves {', '.join(RUNNER_NEEDS)}: kdbench.methods.base)")
    # the method's EMA teacher: a copy of the student now, averaged after every optimiser step
    ema_teacher = EMA(job.student, job.method.ema_momentum(), None, "copy") \
        if "ema_model" in job.method.runtime_needs else None
    online = None  # the online_teacher service: the teacher trains in the student's steps (kdbench.runner.online)
    if "online_teacher" in job.method.runtime_needs:
        if job.teacher is None:
            raise KDBenchError(f"method {job.method.name!r} needs an online teacher, and the job has none")
        online = OnlineTeacher(job.teacher, cfg, steps_per_epoch, epochs)
    result = _resume(job, ema, optimizer, schedule, ema_teacher, online) or FitResult()
    if ema_teacher is not None:
        job.teacher = ema_teacher.model
    averages = tuple(e for e in (ema, ema_teacher) if e is not None)
    if job.teacher is not None and online is None:
        job.teacher.eval()
    last = epochs if job.stop_epoch is None else min(epochs, job.stop_epoch)  # the schedule still spans `epochs`
    bar = tqdm(range(result.resumed_from, last), desc=job.label, unit="epoch",
               initial=result.resumed_from, total=last, leave=False, disable=None)
    for epoch in bar:
        if "past_model" in job.method.runtime_needs and epoch > 0:  # the previous epoch's model
            job.teacher = copy.deepcopy(job.student).eval().requires_grad_(False)
        started = time.perf_counter()
        terms = _train_epoch(job, optimizer, schedule, epoch, epochs, steps_per_epoch, clip, averages, online=online)
        seconds = time.perf_counter() - started
        result.train_seconds += seconds
        entry: dict[str, Any] = {"epoch": epoch, "loss": terms.pop("loss"), "terms": terms,
                                 "lr": optimizer.param_groups[0]["lr"], "seconds": seconds}
        main = job.world.is_main
        if main and _should_eval(cfg, epoch, epochs):
            entry["metrics"] = job.adapter.evaluate(ema.model if ema else job.student, "val")
        result.history.append(entry)
        shown = {k: f"{v:.4g}" for k, v in entry.get("metrics", {}).items() if k == job.primary and v is not None}
        bar.set_postfix(loss=f"{entry['loss']:.3f}", **shown)
        if bar.disable and main:  # no terminal (CI, a pipe, nohup): one plain line an epoch instead of the bar
            val = "".join(f", val {k} {v}" for k, v in shown.items())
            print(f"{job.label}: epoch {epoch + 1}/{last}, loss {entry['loss']:.4f}{val}, {seconds:.1f} s",
                  file=sys.stderr, flush=True)
        if job.checkpoint is not None and main:
            checkpoint.save(job.checkpoint, {
                "epoch": epoch + 1, "stage": job.method.stage, "generation": job.method.generation,
                "student": job.student.state_dict(),
                "method": job.method.state_dict(), "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(), "history": result.history,
                "train_seconds": result.train_seconds, "ema": ema.state_dict() if ema else None,
                **({"ema_model": ema_teacher.state_dict()} if ema_teacher is not None else {}),
                **({"online_teacher": online.state_dict()} if online is not None else {})})
    bar.close()
    if online is not None:
        online.model.eval()
    if ema is not None:  # what is evaluated and saved from here on is the averaged model
        job.student.load_state_dict(ema.model.state_dict())
    return result


def _resume(job: Job, ema: EMA | None, optimizer: torch.optim.Optimizer, schedule: Any,
            ema_teacher: EMA | None = None, online: OnlineTeacher | None = None) -> FitResult | None:
    """Load `job.checkpoint` into the run's modules and return where it stopped; None when there
    is none or it is damaged (then it is moved aside, said on stderr, and every module is as it
    was: the run starts from scratch). `ema_teacher` (the `ema_model` service) is restored from
    the checkpoint's "ema_model" entry, `online` (the `online_teacher` service: its weights,
    optimiser and schedule) from its "online_teacher" entry."""
    path = job.checkpoint
    if path is None or not path.is_file():
        return None
    parts: dict[str, Any] = {"student": job.student, "method": job.method, "optimizer": optimizer,
                             "schedule": schedule, **({"ema": ema} if ema is not None else {}),
                             **({"ema_model": ema_teacher} if ema_teacher is not None else {}),
                             **({"online_teacher": online} if online is not None else {})}
    fresh = {name: copy.deepcopy(part.state_dict()) for name, part in parts.items()}
    try:
        state = checkpoint.load(path, job.adapter.device)
        if int(state.get("generation", 0)) != job.method.generation:
            raise ValueError(f"it belongs to generation {state.get('generation')}, not {job.method.generation}")
        for name, part in parts.items():
            part.load_state_dict(state[name])
        return FitResult(list(state["history"]), float(state["train_seconds"]), int(state["epoch"]))
    except (checkpoint.CheckpointError, KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        for name, part in parts.items():
            part.load_state_dict(fresh[name])
        discard(path, e, "training from scratch")
        return None


def discard(path: Path, error: BaseException, then: str) -> None:
    """Move a damaged checkpoint aside and say so (one line on stderr)."""
    aside = checkpoint.move_aside(path)
    what = str(error).splitlines()[0] if str(error) else type(error).__name__
    what = what.removeprefix(f"{printable(path)}: ")
    if isinstance(error, KeyError):
        what = f"no {error} entry"
    print(f"kdbench: warning: resume checkpoint {path} is unusable ({what[:300]}); moved to {aside.name}; "
          f"{then}", file=sys.stderr)


def fit_stages(job: Job) -> FitResult:
    """`fit`, then each of the method's later stages (`Method.later_stages`, DWPose's second).

    Stage i > 0 trains `adapter.head_stage(previous model)` (a fresh head on the frozen rest)
    with the previous stage's final model, frozen, as its teacher; `job.student` ends as the
    last stage's model. A finished stage is saved as `stage<i>.pt` beside `job.checkpoint`
    (with its index, model, method state and history) and stage i checkpoints every epoch to
    `last-stage<i>.pt`, so a rerun after a crash resumes in the stage it was in; the runner
    removes them once the record is written (clean_checkpoints).

    A method that needs `generations` trains its generations instead (`fit_generations`).
    """
    stages = job.method.later_stages()
    if "online_teacher" in job.method.runtime_needs and (stages or "generations" in job.method.runtime_needs):
        raise KDBenchError(f"method {job.method.name!r} needs an online teacher and later stages or generations; "
                           "the runner serves an online teacher in a single training only")
    if "generations" in job.method.runtime_needs:
        if stages:
            raise KDBenchError(f"method {job.method.name!r} needs generations and has later stages; the runner "
                               "serves one or the other")
        return fit_generations(job)
    if not stages:
        return fit(job)
    if "head_stage" not in job.adapter.provides:  # refused before any stage trains
        raise KDBenchError(f"task {job.adapter.task!r} cannot train a head alone (needs head_stage)")
    folder = job.checkpoint.parent if job.checkpoint is not None else None
    total = FitResult()
    model = job.student
    for i in range(len(stages) + 1):
        done = folder / f"stage{i}.pt" if folder is not None else None
        job.method.stage = i
        result = _finished(done, model, job, "stage") if done is not None and done.is_file() else None
        if result is None:
            ckpt = job.checkpoint if i == 0 or folder is None else folder / f"last-stage{i}.pt"
            epochs = int(job.train["epochs"]) if i == 0 else \
                max(1, round(stages[i - 1].epochs_fraction * int(job.train["epochs"])))
            train = {**job.train, "epochs": epochs, **(stages[i - 1].train if i else {})}
            result = fit(replace(job, student=model, checkpoint=ckpt, train=train, label=f"{job.label} stage {i + 1}"))
            for entry in result.history:
                entry["stage"] = i
            if done is not None:
                checkpoint.save(done, {"stage": i, "student": model.state_dict(), "method": job.method.state_dict(),
                                       "history": result.history, "train_seconds": result.train_seconds})
        total.history += result.history
        total.train_seconds += result.train_seconds
        if i < len(stages):
            teacher = copy.deepcopy(model).eval().requires_grad_(False)
            torch.manual_seed(epoch_seed(job.seed, 1000 + i))  # the fresh head's initialisation
            model = job.adapter.head_stage(teacher)
            job = replace(job, teacher=teacher)
    job.student.load_state_dict(model.state_dict())
    return total  # the stage files stay until the run's record is written (clean_checkpoints)


def fit_generations(job: Job) -> FitResult:
    """The `generations` service: generations 0..G of the student (G = `Method.generations()`),
    each trained by `fit` for the card's epochs; `job.student` ends as generation G's model.

    Generation 0 trains `job.student` under the run's seed with no teacher. Generation g > 0
    trains a fresh student, built by the adapter under `generation_seed(seed, g)` (which also
    fixes that generation's data order), with generation g − 1's final model (its EMA weights
    where the card has `train.ema`: `fit` leaves them in the model), frozen in eval mode, as its
    teacher; the method learns which generation trains from `Method.generation`. Its own modules
    (none for most methods) carry on across generations. Each finished generation but the last
    is scored on val, on its history's last entry (`metrics`; the last one's are the run's).

    A finished generation is saved as `generation<g>.pt` beside `job.checkpoint` (its index,
    model, method state and history: the next generation's teacher), and generation g > 0
    checkpoints every epoch to `last-generation<g>.pt` (recording g; generation 0 to
    `job.checkpoint`), so a rerun after a crash reads the finished generations back and resumes
    inside the one it was in; the runner removes them once the record is written.
    """
    count = job.method.generations()
    if count < 0:
        raise KDBenchError(f"method {job.method.name!r} asks for {count} generations; 0 or more")
    folder = job.checkpoint.parent if job.checkpoint is not None else None
    needs = type(job.method).needs
    total, model = FitResult(), job.student
    teacher: nn.Module | None = None
    for g in range(count + 1):
        job.method.generation = g
        seed = generation_seed(job.seed, g)
        if g > 0:
            torch.manual_seed(seed)  # the fresh initialisation
            model = job.adapter.build_model("student", needs).to(job.adapter.device)
        done = folder / f"generation{g}.pt" if folder is not None else None
        result = _finished(done, model, job, "generation") if done is not None and done.is_file() else None
        if result is None:
            ckpt = job.checkpoint if g == 0 or folder is None else folder / f"last-generation{g}.pt"
            result = fit(replace(job, student=model, teacher=teacher, seed=seed, checkpoint=ckpt,
                                 label=f"{job.label} generation {g}"))
            for entry in result.history:
                entry["generation"] = g
            if g < count and job.world.is_main and result.history:
                result.history[-1]["metrics"] = job.adapter.evaluate(model, "val")
            if done is not None and job.world.is_main:
                checkpoint.save(done, {"generation": g, "student": model.state_dict(),
                                       "method": job.method.state_dict(), "history": result.history,
                                       "train_seconds": result.train_seconds})
        total.history += result.history
        total.train_seconds += result.train_seconds
        teacher = copy.deepcopy(model).eval().requires_grad_(False) if g < count else None
    job.student.load_state_dict(model.state_dict())
    return total  # the generation files stay until the run's record is written (clean_checkpoints)


def clean_checkpoints(folder: Path) -> None:
    """Remove a finished run's resume checkpoints (`last.pt`, `stage*.pt`, `last-stage*.pt`,
    `generation*.pt`, `last-generation*.pt`)."""
    for path in [folder / "last.pt", *folder.glob("stage*.pt"), *folder.glob("last-stage*.pt"),
                 *folder.glob("generation*.pt"), *folder.glob("last-generation*.pt")]:
        path.unlink(missing_ok=True)


def _finished(path: Path, model: nn.Module, job: Job, what: str) -> FitResult | None:
    """A finished stage or generation (`what`) read back from `stage<i>.pt` / `generation<g>.pt`;
    None (it trains again) when damaged."""
    fresh = copy.deepcopy(model.state_dict()), copy.deepcopy(job.method.state_dict())
    try:
        state = checkpoint.load(path, job.adapter.device)
        model.load_state_dict(state["student"])
        job.method.load_state_dict(state["method"])
        return FitResult(list(state["history"]), float(state["train_seconds"]))
    except (checkpoint.CheckpointError, KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        model.load_state_dict(fresh[0])
        job.method.load_state_dict(fresh[1])
        discard(path, e, f"training the {what} again")
        return None


def _should_eval(cfg: dict[str, Any], epoch: int, epochs: int) -> bool:
    every = int(cfg.get("eval_every", 0) or 0)
    return every > 0 and ((epoch + 1) % every == 0) and epoch + 1 < epochs


def _train_epoch(
    job: Job, optimizer: torch.optim.Optimizer, schedule: Any, epoch: int, epochs: int,
    steps_per_epoch: int, clip: float | None, averages: tuple[EMA, ...] = (), online: OnlineTeacher | None = None,
) -> dict[str, float]:
    torch.manual_seed(epoch_seed(job.seed, epoch))  # dropout and other in-model randomness
    generator = torch.Generator().manual_seed(epoch_seed(job.seed, epoch))
    job.student.train()
    job.method.train()
    if online is not None:
        online.model.train()
    cache = job.teacher_cache
    if cache is None:
        return _train_steps(job, optimizer, schedule, epoch, epochs, steps_per_epoch, clip, averages, generator,
                            online)
    cache.start_epoch(epoch)
    try:
        means = _train_steps(job, optimizer, schedule, epoch, epochs, steps_per_epoch, clip, averages, generator,
                             online)
    except BaseException:
        cache.abort()  # an epoch that did not finish is never published
        raise
    cache.finish_epoch()
    return means


def _train_steps(
    job: Job, optimizer: torch.optim.Optimizer, schedule: Any, epoch: int, epochs: int,
    steps_per_epoch: int, clip: float | None, averages: tuple[EMA, ...], generator: torch.Generator,
    online: OnlineTeacher | None = None,
) -> dict[str, float]:
    """One epoch's steps; returns the mean of every logged term. `averages` (the card's EMA, the
    method's `ema_model` teacher) are updated after every optimiser step; `online` (the
    `online_teacher` service) runs on every batch after the student, whose terms see its outputs
    detached, and takes its own step on its own terms (logged as `teacher/...`) after the student's."""
    sums: dict[str, float] = defaultdict(float)
    count = 0
    steps = epochs * steps_per_epoch
    for i, batch in enumerate(job.adapter.train_batches(int(job.train["batch_size"]), generator)):
        batch = job.world.shard(batch)  # this rank's part (all of it on one process)
        state = RunState(epoch, epochs, epoch * steps_per_epoch + i, steps)
        with torch.autocast(job.adapter.device.type, torch.bfloat16, enabled=job.precision == "bf16"):
            student = job.adapter.forward(job.student, batch)
            teacher: Any = None
            taught: dict[str, Tensor] = {}  # the online teacher's terms
            if online is not None:  # trainable: its outputs keep their graph for its own terms only
                raw = job.adapter.forward(online.model, batch)
                aligned = job.adapter.align(student, raw)
                teacher = aligned.detach()
                taught = online.terms(job.adapter, job.method, student, raw, aligned, state)
            elif job.teacher is not None:
                teacher = _teacher_outputs(job, batch, student, i)
            terms = _terms(job, student, teacher, state)
        loss = torch.stack(list(terms.values())).sum()
        teacher_loss = torch.stack(list(taught.values())).sum() if taught else None
        if not job.world.all_finite(loss if teacher_loss is None else loss + teacher_loss.detach()):
            values = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in {**terms, **taught}.items())
            raise NonFiniteLoss(f"non-finite loss at epoch {epoch}, step {state.step} "
                                f"(batch {i} of the epoch): {values}")
        optimizer.zero_grad(set_to_none=True)
        stepped = [p for g in optimizer.param_groups for p in g["params"]]
        job.method.backward(loss, terms, stepped)  # loss.backward() unless the method combines its gradients
        job.world.average_gradients(stepped)
        if clip:
            torch.nn.utils.clip_grad_norm_(stepped, float(clip))
        optimizer.step()
        schedule.step()
        for average in averages:
            average.update(job.student)
        if online is not None and teacher_loss is not None:
            online.step(teacher_loss, job.world)
            for k, v in job.world.global_losses(teacher_loss, {k: v.detach() for k, v in taught.items()})[1].items():
                sums[k] += float(v)
        # per-step memories see the global batch on every rank: terms averaged, heads gathered
        total, detached = job.world.global_losses(loss, {k: v.detach() for k, v in terms.items()})
        seen = student.detach()
        if type(job.method).after_step is not Method.after_step:  # only a method that reads them
            seen = job.world.gather_heads(seen)
        job.method.after_step(seen, detached, state)
        for k, v in detached.items():
            sums[k] += float(v)
        sums["loss"] += total
        count += 1
    return {k: v / max(count, 1) for k, v in sums.items()}


def _teacher_outputs(job: Job, batch: Any, student: Any, step: int) -> Any:
    cache = job.teacher_cache
    if cache is not None and cache.hit:
        raw = cache.teacher(step, student)
    else:
        with torch.no_grad():
            raw = job.adapter.forward(job.teacher, batch)  # type: ignore[arg-type]
        if cache is not None:
            raw = cache.add(raw)  # as later runs will read it back
    return job.adapter.align(student, raw)


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



def probe_outputs(adapter: Adapter, model: nn.Module, method: type[Method] | None = None) -> Outputs:
    """Detached eval-mode Outputs on a fixed small batch (sizes methods' own modules).

    With `method` (the student's probe): the method's needs that are parts of Outputs
    (OUTPUT_NEEDS: `layers`, `features`, `attentions`, `ids`) must be in what these outputs hold, or a
    KDBenchError names the method, the missing parts and what the outputs provide — the task
    declared them in `provides`, so its `provides` or its `forward` is stale. Likewise the final
    heads' names and kinds must be the task's `head_kinds`, which decided that it serves the method.
    """
    was_training = model.training
    model.eval()
    with torch.no_grad():
        batch = next(iter(adapter.train_batches(2, torch.Generator().manual_seed(0))))
        outputs = adapter.forward(model, batch).detach()
    model.train(was_training)
    if method is not None:
        missing = method.needs.intersection(OUTPUT_NEEDS) - outputs.provides
        if missing:
            raise KDBenchError(
                f"method {method.name!r} needs {', '.join(sorted(missing))} from the student's Outputs, which "
                f"task {adapter.task!r} declares in its provides, but its forward returned Outputs that provide "
                f"only {', '.join(sorted(outputs.provides))} (Outputs.provides; a `layers` need wants more than "
                "the final heads)")
        kinds = {name: head.kind for name, head in outputs.heads.items()}
        if kinds != adapter.head_kinds:
            raise KDBenchError(
                f"task {adapter.task!r} declares the heads {_kinds(adapter.head_kinds)} (head_kinds), but its "
                f"forward returned {_kinds(kinds)}: its head_kinds or its forward is stale")
    return outputs


def _kinds(heads: Mapping[str, str]) -> str:
    return ", ".join(f"{name} ({kind})" for name, kind in heads.items()) or "none"
