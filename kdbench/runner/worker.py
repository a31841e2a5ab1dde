"""One sweep item, executed in isolation: a run or a teacher, with any failure turned into a
`failed` record (the error and the tail of its traceback) instead of an exception.

Every executor ends up here: the local pool runs `python -m kdbench.runner.worker` in a fresh
process per item, Ray and submitit call `execute` inside their own worker processes.
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
    """Run `item`; returns {"label", "status", "seconds", "message"} and never raises."""
    if threads:
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
            "message": message}


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


def main(argv: list[str] | None = None) -> int:
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

    atomic_write_bytes(Path(args.outcome), json.dumps(outcome).encode())
    return 0 if outcome["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
