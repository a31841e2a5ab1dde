"""Where sweep items run: a local process pool, Ray, or Slurm through submitit.

Each executor takes a list of independent items and yields one outcome per item as it finishes;
`drive` calls it twice, teachers first, then runs (so each teacher is trained once and shared).
Every item runs in its own process: the local pool starts `python -m kdbench.runner.worker` with
its CPU share pinned (affinity and thread count), Ray gives each task a fresh worker process
(`max_calls=1`), submitit a job (or an array task) per item.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdbench.errors import UsageError, unknown
from kdbench.runner.sweep import Item, Outcome, Plan

EXECUTORS = ("local", "ray", "slurm")


@dataclass
class ExecutorOptions:
    kind: str = "local"
    workers: int = 1
    results: Path = Path("results")
    data_root: Path | None = None
    device: str = "auto"
    threads: int | None = None  # per item; default: the machine's CPUs / workers
    ray_address: str | None = None
    slurm: dict[str, Any] = field(default_factory=dict)  # submitit parameters (slurm_partition, ...)
    slurm_cluster: str | None = None  # None: auto (Slurm when available), "local", "debug"
    slurm_array: bool = True
    logs: Path | None = None


def _cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def _outcome(item: Item, raw: dict[str, Any] | None, seconds: float, fallback: str) -> Outcome:
    if raw is None:
        return Outcome(item, "crashed", seconds, fallback)
    return Outcome(item, raw["status"], raw["seconds"], raw.get("message", ""))


def run_local(items: list[Item], opts: ExecutorOptions) -> Iterator[Outcome]:
    """A pool of `workers` slots; slot i owns CPUs [i·t, (i+1)·t) and t threads."""
    cpus = _cpus()
    workers = max(1, min(opts.workers, len(items) or 1))
    share = opts.threads or max(1, len(cpus) // workers)
    slots: list[list[int]] = [cpus[(i * share) % len(cpus):][:share] or cpus for i in range(workers)]
    free = list(range(workers))
    lock = threading.Lock()
    logs = opts.logs or Path(tempfile.mkdtemp(prefix="kdbench-sweep-"))
    logs.mkdir(parents=True, exist_ok=True)

    def one(item: Item) -> Outcome:
        with lock:
            slot = free.pop()
        try:
            return _subprocess(item, slots[slot], share, opts, logs)
        finally:
            with lock:
                free.append(slot)

    with ThreadPoolExecutor(workers) as pool:
        pending: set[Future[Outcome]] = {pool.submit(one, item) for item in items}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                yield f.result()


def _subprocess(item: Item, cpus: list[int], threads: int, opts: ExecutorOptions, logs: Path) -> Outcome:
    stem = item.label.replace("/", "_")
    outcome_file, log_file = logs / f"{stem}.outcome.json", logs / f"{stem}.log"
    outcome_file.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "kdbench.runner.worker", item.to_json(), "--results", str(opts.results),
           "--device", opts.device, "--threads", str(threads), "--outcome", str(outcome_file)]
    if opts.data_root:
        cmd += ["--data-root", str(opts.data_root)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}

    def pin() -> None:
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, cpus)

    started = time.perf_counter()
    with open(log_file, "wb") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=pin, check=False)
    raw = json.loads(outcome_file.read_text()) if outcome_file.is_file() else None
    tail = log_file.read_text(errors="replace").splitlines()[-5:]
    return _outcome(item, raw, time.perf_counter() - started,
                    f"worker exited with {proc.returncode} without an outcome: {' | '.join(tail)}")


def run_ray(items: list[Item], opts: ExecutorOptions) -> Iterator[Outcome]:
    """Ray tasks on `--ray-address` or a local Ray; workers write records into the results tree."""
    try:
        import ray
    except ImportError:
        raise UsageError("--executor ray needs Ray: pip install 'kdbench[ray]'") from None
    from kdbench.runner.worker import execute

    started_here = not ray.is_initialized()
    if started_here:
        if opts.ray_address:
            ray.init(address=opts.ray_address, log_to_driver=False)
        else:
            ray.init(num_cpus=opts.workers, include_dashboard=False, log_to_driver=False)
    threads = opts.threads or max(1, len(_cpus()) // max(opts.workers, 1))
    remote = ray.remote(num_cpus=1, max_calls=1)(execute)
    results, data_root = str(Path(opts.results).resolve()), str(opts.data_root) if opts.data_root else None
    started = time.perf_counter()
    refs = {remote.remote(item, results, data_root, opts.device, threads): item for item in items}
    try:
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                try:
                    raw = ray.get(ref)
                except Exception as e:  # the worker process itself died
                    raw, why = None, f"ray task failed: {e}"
                else:
                    why = ""
                yield _outcome(refs[ref], raw, time.perf_counter() - started, why)
    finally:
        if started_here:
            ray.shutdown()


def run_slurm(items: list[Item], opts: ExecutorOptions) -> Iterator[Outcome]:
    """submitit jobs: one job array over the items (or one job each); `slurm_cluster='local'` runs
    them as local processes with the same interface (what the tests use)."""
    try:
        import submitit
    except ImportError:
        raise UsageError("--executor slurm needs submitit: pip install 'kdbench[slurm]'") from None
    from kdbench.runner.worker import execute

    folder = (opts.logs or Path(tempfile.mkdtemp(prefix="kdbench-submitit-"))) / "%j"
    executor = submitit.AutoExecutor(folder=str(folder), cluster=opts.slurm_cluster)
    threads = opts.threads or 1
    params: dict[str, Any] = {"timeout_min": 24 * 60, "cpus_per_task": threads, "nodes": 1}
    if executor.cluster == "slurm":
        params["slurm_array_parallelism"] = max(opts.workers, 1)
    executor.update_parameters(**params, **opts.slurm)
    results, data_root = str(Path(opts.results).resolve()), str(opts.data_root) if opts.data_root else None
    args = (results, data_root, opts.device, threads)
    if opts.slurm_array and len(items) > 1:
        jobs = executor.map_array(execute, items, *[[a] * len(items) for a in args])
    else:
        jobs = [executor.submit(execute, item, *args) for item in items]
    started = time.perf_counter()
    pending = dict(zip(jobs, items, strict=True))
    while pending:
        for job in [j for j in pending if j.done()]:
            item = pending.pop(job)
            try:
                raw, why = job.result(), ""
            except Exception as e:  # the job itself failed (killed, timed out)
                raw, why = None, f"job {job.job_id} failed: {str(e).splitlines()[0] if str(e) else e}"
            yield _outcome(item, raw, time.perf_counter() - started, why)
        if pending:
            time.sleep(0.5)


RUNNERS: dict[str, Callable[[list[Item], ExecutorOptions], Iterator[Outcome]]] = {
    "local": run_local, "ray": run_ray, "slurm": run_slurm}


def drive(plan: Plan, opts: ExecutorOptions, progress: bool = True) -> list[Outcome]:
    """Teachers first (once each, shared), then the runs; a tqdm bar over all of them."""
    from tqdm.auto import tqdm

    if opts.kind not in RUNNERS:
        raise unknown("executor", opts.kind, EXECUTORS)
    runner = RUNNERS[opts.kind]
    outcomes: list[Outcome] = []
    bar = tqdm(total=len(plan.teachers) + len(plan.runs), unit="run", desc="sweep", disable=not progress)
    for phase in (plan.teachers, plan.runs):  # a failed teacher fails its runs, each recorded
        for outcome in runner(phase, opts) if phase else ():
            outcomes.append(outcome)
            bar.update(1)
            bar.set_postfix_str(f"{outcome.item.label}: {outcome.status}")
    bar.close()
    return outcomes
