"""Sweep scaling: the same small-tier sweep on 1 and on 2 local workers.

    python benchmarks/perf/sweep_scaling.py [--task classification] [--methods baseline] [--seeds 0-3]

Each sweep writes into its own temporary results folder (so nothing is skipped) and shares the
teacher cache; with W workers each run gets CPUs / W threads, pinned. Prints both wall times and
the speed-up; the goal is ≥ 1.7× with 2 workers on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def sweep(workers: int, args: argparse.Namespace, results: Path) -> float:
    cmd = [sys.executable, "-m", "kdbench", "sweep", "--tasks", args.task, "--methods", args.methods,
           "--seeds", args.seeds, "--protocol", args.protocol, "--executor", "local",
           "--workers", str(workers), "--results", str(results), "--logs", str(results / "logs")]
    started = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="classification")
    parser.add_argument("--methods", default="baseline")
    parser.add_argument("--seeds", default="0-3")
    parser.add_argument("--protocol", default="small")
    args = parser.parse_args()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with tempfile.TemporaryDirectory() as tmp:
        one = sweep(1, args, Path(tmp) / "w1")
        two = sweep(2, args, Path(tmp) / "w2")
    print(f"{args.task}/{args.protocol}, methods {args.methods}, seeds {args.seeds}, {cpus} CPUs")
    print(f"  1 worker   {one:7.1f} s   1.00×")
    print(f"  2 workers  {two:7.1f} s   {one / two:4.2f}× speed-up   (goal ≥ 1.7×)")


if __name__ == "__main__":
    main()
