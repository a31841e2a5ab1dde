"""Where sweep items run: a local process pool, Ray, or Slurm through submitit.

Each executor takes a list of independent items and yields one outcome per item as it finishes;
`drive` calls it twice, teachers first, then runs (so each teacher is trained once and shared).
Every item runs isolated from the others. The local pool keeps, per slot, one long-lived
`python -m kdbench.runner.worker --serve` with the slot's CPU share pinned (affinity, OMP/MKL env,
thread count) that imports once and runs the slot's items one at a time over a JSON-lines protocol
(see `kdbench.runner.worker`); each item's output goes to its own log under `logs`. An item's
exception or non-finite loss fails that item only; a worker that dies (a signal, OOM, `os._exit`)
fails the item it was running, as a fresh process's death would, and is replaced by a fresh worker
for the slot's next item. `fresh_workers=True` (`kdbench sweep --fresh-workers`) starts a fresh
`python -m kdbench.runner.worker ITEM` per item instead. Ray gives each task a fresh worker
process (`max_calls=1`), submitit a job (or an array task) per item; neither persists workers yet.

GPUs: `gpus_per_run` N (`kdbench sweep --gpus-per-run N`) reserves N GPUs for every item on every
executor, and each item's process sees exactly its own through `CUDA_VISIBLE_DEVICES`: the local
pool gives slot i the visible GPUs [i·N, (i+1)·N), Ray tasks ask for `num_gpus=N`, Slurm jobs for
`gpus_per_node=N` (with `cpus_per_task` derived from N); `check_gpus` refuses what cannot be met
before any work and fixes the device the items get (`kdbench.runner.gpus`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kdbench.errors import UsageError
from kdbench.registry import Registry
from kdbench.runner.gpus import check_visible, slot_gpus, sweep_device, visible_gpus
from kdbench.runner.sweep import Item, Outcome, Plan
from kdbench.runner.worker import record_crash

#: A sweep executor: runs one phase of items (the teachers, then the runs) and yields their outcomes.
Runner = Callable[[list[Item], "ExecutorOptions"], Iterator[Outcome]]
#: executor name → its Runner (`kdbench sweep --executor`).
EXECUTORS: Registry[Runner] = Registry("executor")

#: A Slurm job's CPUs per GPU it holds, unless `--threads` or `--slurm-param cpus_per_task=` says
#: otherwise: a GPU run's CPUs feed it, and kdbench's COCO-format readers decode each batch's images
#: on 8 threads (`READ_THREADS` in kdbench/adapters/detection/data.py and pose/data.py).
CPUS_PER_GPU = 8


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
    fresh_workers: bool = False  # local: a fresh process per item instead of one per slot
    gpus_per_run: int = 0  # GPUs reserved for each item (0: items run on CPU)


def _cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def _outcome(item: Item, raw: dict[str, Any] | None, seconds: float, fallback: str) -> Outcome:
    if raw is None:
        return Outcome(item, "crashed", seconds, fallback)
    return Outcome(item, raw["status"], raw["seconds"], raw.get("message", ""), raw.get("pid"), raw.get("gpus"))


def _submitit_here(opts: ExecutorOptions) -> bool:
    """Whether submitit would run the jobs on this machine: its local or debug executor, chosen or
    picked by AutoExecutor where there is no `srun` (submitit/auto/auto.py, SlurmExecutor.affinity)."""
    import shutil

    return opts.slurm_cluster in ("local", "debug") or (opts.slurm_cluster is None and shutil.which("srun") is None)


def check_gpus(opts: ExecutorOptions) -> ExecutorOptions:
    """`opts` with the device its items get (`kdbench.runner.gpus.sweep_device`), after refusing in
    one line, before any work, a GPU request that cannot be met from this machine: the local pool's
    workers × N beyond the GPUs visible here, N > 0 where a local Ray or submitit's local executor
    would see none. A Ray cluster's nodes are checked on connecting (`run_ray`); a Slurm cluster's
    partitions are Slurm's to refuse (sbatch rejects a request no node can meet)."""
    device = sweep_device(opts.device, opts.gpus_per_run)
    if opts.gpus_per_run > 0:
        if opts.kind == "local":
            check_visible(opts.gpus_per_run, opts.workers, visible_gpus())
        elif (opts.kind == "ray" and not opts.ray_address) or (opts.kind == "slurm" and _submitit_here(opts)):
            check_visible(opts.gpus_per_run, 1, visible_gpus(), None)
    return replace(opts, device=device)


@EXECUTORS.register("local")
def run_local(items: list[Item], opts: ExecutorOptions) -> Iterator[Outcome]:
    """A pool of `workers` slots; slot i owns CPUs [i·t, (i+1)·t), t threads and the visible GPUs
    [i·N, (i+1)·N) (`gpus.slot_gpus`: none at N = 0, so a slot's worker sees no GPU)."""
    cpus = _cpus()
    workers = max(1, min(opts.workers, len(items) or 1))
    share = opts.threads or max(1, len(cpus) // workers)
    slots: list[list[int]] = [cpus[(i * share) % len(cpus):][:share] or cpus for i in range(workers)]
    gpus = slot_gpus(workers, opts.gpus_per_run, visible_gpus())
    free = list(range(workers))
    lock = threading.Lock()
    logs = opts.logs or Path(tempfile.mkdtemp(prefix="kdbench-sweep-"))
    logs.mkdir(parents=True, exist_ok=True)

    kept = [_Worker(slots[i], share, opts, logs, i, gpus[i]) for i in range(workers)]

    def one(item: Item) -> Outcome:
        with lock:
            slot = free.pop()
        try:
            if opts.fresh_workers:
                return _subprocess(item, slots[slot], share, opts, logs, gpus[slot])
            return kept[slot].run(item)
        finally:
            with lock:
                free.append(slot)

    with ThreadPoolExecutor(workers) as pool:
        pending: set[Future[Outcome]] = {pool.submit(one, item) for item in items}
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    yield f.result()
        finally:  # also on Ctrl-C or an abandoned sweep: no queued item starts, no worker is left
            for f in pending:
                f.cancel()
            for w in kept:  # before the pool's threads end (their PR_SET_PDEATHSIG would kill them)
                w.close()


def worker_command() -> list[str]:
    """`python -m kdbench.runner.worker` with a safe sys.path: the working directory is not put
    first (`-P`), so a folder named `kdbench` there cannot shadow the installed package."""
    if sys.version_info >= (3, 11):
        return [sys.executable, "-P", "-m", "kdbench.runner.worker"]
    return [sys.executable, "-c", "import sys; del sys.path[0]; from kdbench.runner.worker import main; "
            "sys.exit(main())"]


def _die_with_parent(parent: int) -> None:
    """In a forked worker: be killed when the sweep's process dies (Linux PR_SET_PDEATHSIG), so
    that a `kill -9` of the sweep leaves no orphans training on."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


def worker_env(cpus: list[int], threads: int, gpus: list[str]) -> tuple[dict[str, str], Callable[[], None]]:
    """The environment and preexec function of a worker pinned to `cpus` with `threads` threads
    that sees exactly `gpus` (`CUDA_VISIBLE_DEVICES`; '' hides every GPU)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONSAFEPATH": "1",
           "CUDA_VISIBLE_DEVICES": ",".join(gpus)}
    parent = os.getpid()

    def prepare() -> None:
        _die_with_parent(parent)
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, cpus)

    return env, prepare


def _paths(item: Item, logs: Path) -> tuple[Path, Path]:
    stem = item.label.replace("/", "_")
    return logs / f"{stem}.outcome.json", logs / f"{stem}.log"


def _crashed(item: Item, opts: ExecutorOptions, code: int, log_file: Path, started: float,
             extra: Path | None = None) -> Outcome:
    """The outcome (and `failed` record) of an item whose worker ended with `code` and no outcome."""
    lines = log_file.read_text(errors="replace").splitlines() if log_file.is_file() else []
    if not lines and extra is not None and extra.is_file():  # died before the item's log was opened
        lines = extra.read_text(errors="replace").splitlines()
    tail = lines[-5:]
    why = f"worker killed by signal {_signal_name(-code)}" if code < 0 else f"worker exited with {code}"
    why = record_crash(item, opts.results, opts.data_root, opts.device,
                       f"{why} without an outcome: {' | '.join(tail)}"[:2000], "\n".join(tail))
    return _outcome(item, None, time.perf_counter() - started, why)


class _Worker:
    """One slot's long-lived `kdbench.runner.worker --serve`, started on first use and again after
    it died; used by one thread at a time (the slot's owner)."""

    def __init__(self, cpus: list[int], threads: int, opts: ExecutorOptions, logs: Path, slot: int,
                 gpus: list[str]) -> None:
        self.cpus, self.threads, self.opts, self.logs, self.gpus = cpus, threads, opts, logs, gpus
        self.own_log = logs / f"worker-{slot}.log"  # output between items (imports, teardown)
        self.proc: subprocess.Popen[bytes] | None = None
        self.lock = threading.Lock()

    def _start(self) -> subprocess.Popen[bytes]:
        env, prepare = worker_env(self.cpus, self.threads, self.gpus)
        with open(self.own_log, "ab") as own:
            return subprocess.Popen([*worker_command(), "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=own, env=env, preexec_fn=prepare)

    def run(self, item: Item) -> Outcome:
        log_file = _paths(item, self.logs)[1]
        log_file.unlink(missing_ok=True)
        started = time.perf_counter()
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                self.proc = self._start()
            proc = self.proc
        assert proc.stdin is not None and proc.stdout is not None
        request = {"item": item.to_json(), "results": str(self.opts.results), "device": self.opts.device,
                   "data_root": str(self.opts.data_root) if self.opts.data_root else None,
                   "threads": self.threads, "log": str(log_file.resolve())}
        try:
            proc.stdin.write((json.dumps(request) + "\n").encode())
            proc.stdin.flush()
            answer = proc.stdout.readline()
        except (BrokenPipeError, OSError):
            answer = b""
        try:
            raw = json.loads(answer) if answer else None
        except ValueError:
            raw = None
        if raw is not None:
            return _outcome(item, raw, time.perf_counter() - started, "")
        with self.lock:  # the worker died mid-item: this item fails, the next one gets a fresh worker
            code = proc.wait()
            if self.proc is proc:
                self.proc = None
        return _crashed(item, self.opts, code, log_file, started, self.own_log)

    def close(self) -> None:
        """Ask the worker to exit (EOF on its stdin); kill it if it has not within a few seconds."""
        with self.lock:
            proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def _subprocess(item: Item, cpus: list[int], threads: int, opts: ExecutorOptions, logs: Path,
                gpus: list[str]) -> Outcome:
    outcome_file, log_file = _paths(item, logs)
    outcome_file.unlink(missing_ok=True)
    cmd = [*worker_command(), item.to_json(), "--results", str(opts.results),
           "--device", opts.device, "--threads", str(threads), "--outcome", str(outcome_file)]
    if opts.data_root:
        cmd += ["--data-root", str(opts.data_root)]
    env, prepare = worker_env(cpus, threads, gpus)
    started = time.perf_counter()
    with open(log_file, "wb") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=prepare, check=False)
    try:
        raw = json.loads(outcome_file.read_text()) if outcome_file.is_file() else None
    except (OSError, ValueError):
        raw = None
    if raw is not None:
        return _outcome(item, raw, time.perf_counter() - started, "")
    return _crashed(item, opts, proc.returncode, log_file, started)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def ray_options(opts: ExecutorOptions) -> dict[str, Any]:
    """`ray.remote` options of a sweep item: one CPU slot, `num_gpus=N` (Ray reserves N GPUs and
    points the task's CUDA_VISIBLE_DEVICES at them; docs.ray.io/en/latest/ray-core/scheduling/
    accelerators.html), a fresh worker process per item (`max_calls=1`)."""
    return {"num_cpus": 1, "num_gpus": opts.gpus_per_run, "max_calls": 1}


def _check_ray_gpus(ray: Any, opts: ExecutorOptions) -> None:
    """Refuse N GPUs per task where no alive node of the cluster has N (the task could never be
    scheduled: Ray would wait for it for ever)."""
    if opts.gpus_per_run <= 0:
        return
    most = max((float(n.get("Resources", {}).get("GPU", 0)) for n in ray.nodes() if n.get("Alive")), default=0.0)
    if most < opts.gpus_per_run:
        where = f"at {opts.ray_address}" if opts.ray_address else "started here"
        raise UsageError(f"--gpus-per-run {opts.gpus_per_run}: no node of the Ray cluster {where} has "
                         f"{opts.gpus_per_run} GPUs (the most on one node: {most:g}); valid: --gpus-per-run "
                         f"{int(most)} or fewer")


@EXECUTORS.register("ray")
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
    try:
        _check_ray_gpus(ray, opts)
        threads = opts.threads or max(1, len(_cpus()) // max(opts.workers, 1))
        remote = ray.remote(**ray_options(opts))(execute)
        results, data_root = str(Path(opts.results).resolve()), str(opts.data_root) if opts.data_root else None
        started = time.perf_counter()
        refs = {remote.remote(item, results, data_root, opts.device, threads): item for item in items}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                try:
                    raw = ray.get(ref)
                except Exception as e:  # the worker process itself died
                    raw = None
                    why = record_crash(refs[ref], results, data_root, opts.device, f"ray task failed: {e}"[:2000])
                else:
                    why = ""
                yield _outcome(refs[ref], raw, time.perf_counter() - started, why)
    finally:
        if started_here:
            ray.shutdown()


def slurm_parameters(opts: ExecutorOptions, cluster: str) -> tuple[dict[str, Any], int]:
    """submitit's parameters for a sweep's jobs on `cluster`, and the threads each item is given.

    Generic AutoExecutor parameters (facebookincubator.github.io/submitit/api.html, "Update
    parameters"): one node, a day's time limit, `gpus_per_node=N` when N > 0 (sbatch
    `--gpus-per-node`; Slurm sets the job's CUDA_VISIBLE_DEVICES to the GPUs it allocated), and
    `cpus_per_task` = `--threads`, else `CPUS_PER_GPU` × N with GPUs, else 1; on Slurm the array's
    parallelism is `--workers`. `--slurm-param KEY=VALUE` overrides any of them.
    """
    n = opts.gpus_per_run
    cpus = opts.threads or (CPUS_PER_GPU * n if n > 0 else 1)
    params: dict[str, Any] = {"timeout_min": 24 * 60, "cpus_per_task": cpus, "nodes": 1}
    if n > 0:
        params["gpus_per_node"] = n
    if cluster == "slurm":
        params["slurm_array_parallelism"] = max(opts.workers, 1)
    params.update(opts.slurm)
    threads = params["cpus_per_task"]
    return params, threads if isinstance(threads, int) and threads > 0 else cpus


@EXECUTORS.register("slurm")
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
    params, threads = slurm_parameters(opts, executor.cluster)
    executor.update_parameters(**params)
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
                raw = None
                why = record_crash(item, results, data_root, opts.device,
                                   f"job {job.job_id} failed: {str(e).splitlines()[0] if str(e) else e}"[:2000])
            yield _outcome(item, raw, time.perf_counter() - started, why)
        if pending:
            time.sleep(0.5)


def drive(plan: Plan, opts: ExecutorOptions, progress: bool = True) -> list[Outcome]:
    """Teachers first (once each, shared), then the runs; a tqdm bar over all of them."""
    from tqdm.auto import tqdm

    runner = EXECUTORS[opts.kind]  # an unknown name: one line listing the executors
    opts = check_gpus(opts)
    outcomes: list[Outcome] = []
    bar = tqdm(total=len(plan.teachers) + len(plan.runs), unit="run", desc="sweep", disable=not progress)
    for phase in (plan.teachers, plan.runs):  # a failed teacher fails its runs, each recorded
        for outcome in runner(phase, opts) if phase else ():
            outcomes.append(outcome)
            bar.update(1)
            bar.set_postfix_str(f"{outcome.item.label}: {outcome.status}")
    bar.close()
    return outcomes
