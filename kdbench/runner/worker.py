"""One sweep item, executed in isolation: a run or a teacher, with any failure turned into a
`failed` record (the error and the tail of its traceback) instead of an exception.

Every executor ends up here: the local pool keeps one long-lived `python -m kdbench.runner.worker
--serve` per slot that runs many items one at a time (`serve`; or, with `--fresh-workers`, a fresh
`python -m kdbench.runner.worker ITEM` per item), Ray and submitit call `execute` inside their own
worker processes.

The `--serve` protocol: JSON lines. The sweep writes one request per item on the worker's stdin,
{"item": Item.to_json(), "results", "data_root", "device", "threads", "log"}; the worker points its
fds 1 and 2 at the item's `log` file for the item's duration (so training output lands there, as
with a fresh process), runs `execute`, and answers one line, the outcome plus its "pid", on the fd
that was its stdout at start (kept aside with `os.dup`; fd 0 is pointed at /dev/null). EOF on
stdin: exit 0. A worker that dies mid-item leaves the sweep an EOF instead of an answer.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from kdbench.runner.sweep import Item

TRACEBACK_LINES = 25


def execute(item: Item, results: str, data_root: str | None, device: str = "auto",
            threads: int | None = None) -> dict[str, Any]:
    """Run `item`; returns {"label", "status", "seconds", "message", "gpus"} and never raises
    ("gpus": the process's CUDA_VISIBLE_DEVICES, the GPUs its executor gave it; None when unset)."""
    if threads:  # per item: a persistent worker must not keep an earlier item's thread count
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        import torch

        torch.set_num_threads(threads)
    started = time.perf_counter()
    options = options_for(item, results, data_root, device)
    try:
        if item.method is None:
            from kdbench.runner.run import train_teacher

            record, _ = train_teacher(options)
        else:
            from kdbench.runner.run import run

            record, _ = run(options)
        status, message = record["status"], record.get("error") or ""
    except Exception as e:  # a sweep records every failure and goes on
        tail = "".join(traceback.format_exc().splitlines(keepends=True)[-TRACEBACK_LINES:])
        message = f"{type(e).__name__}: {e}"
        status = "failed"
        if item.method is not None:
            _write_failure(options, message, tail)
        print(tail, file=sys.stderr)
    return {"label": item.label, "status": status, "seconds": time.perf_counter() - started,
            "message": message, "gpus": os.environ.get("CUDA_VISIBLE_DEVICES")}


def options_for(item: Item, results: str | Path, data_root: str | Path | None, device: str = "auto") -> Any:
    """The RunOptions of a sweep item (`--overwrite`: the plan chose to run it)."""
    from kdbench.runner.spec import TEACHER_ONLY, RunOptions

    return RunOptions(task=item.task, method=item.method or TEACHER_ONLY, protocol=item.protocol,
                      seed=item.seed, device=device, data_root=Path(data_root) if data_root else None,
                      results=Path(results), sets=dict(item.sets), overwrite=True)


def record_crash(item: Item, results: str | Path, data_root: str | Path | None, device: str, why: str,
                 tail: str | None = None) -> str:
    """The `failed` record of a run whose worker died without one (killed by a signal, out of
    memory, ...), written by the sweep's own process; returns `why`, with what went wrong if
    the record could not be written. Teachers have no failed record."""
    if item.method is None:
        return why
    from kdbench.runner.run import failure_record

    try:
        failure_record(options_for(item, results, data_root, device), why, tail)
    except Exception as e:  # the card itself cannot be read any more, the folder is gone, ...
        return f"{why} (and its failed record could not be written: {type(e).__name__}: {e})"
    return why


def _write_failure(options: Any, message: str, tail: str) -> None:
    from kdbench.runner.run import failure_record

    try:
        failure_record(options, message, tail)
    except Exception as e:  # e.g. the card itself cannot be read any more
        print(f"could not write the failed record: {e}", file=sys.stderr)


def serve() -> int:
    """Run items from stdin until EOF, one at a time (the protocol in the module docstring)."""
    requests = os.fdopen(os.dup(0), "r", encoding="utf-8")
    answers = os.fdopen(os.dup(1), "w", encoding="utf-8")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    idle_out, idle_err = os.dup(1), os.dup(2)  # where output between items goes
    for line in requests:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        try:
            outcome = execute(Item.from_json(request["item"]), request["results"], request["data_root"],
                              request["device"], request["threads"])
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(idle_out, 1)
            os.dup2(idle_err, 2)
        answers.write(json.dumps({**outcome, "pid": os.getpid()}) + "\n")
        answers.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    if (sys.argv[1:] if argv is None else argv) == ["--serve"]:
        return serve()
    p = argparse.ArgumentParser(prog="python -m kdbench.runner.worker")
    p.add_argument("item")
    p.add_argument("--results", required=True)
    p.add_argument("--data-root", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--outcome", required=True, help="file the outcome JSON is written to")
    args = p.parse_args(argv)
    outcome = execute(Item.from_json(args.item), args.results, args.data_root, args.device, args.threads)
    from kdbench.records import atomic_write_bytes

    atomic_write_bytes(Path(args.outcome), json.dumps({**outcome, "pid": os.getpid()}).encode())
    return 0 if outcome["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
