"""Persistent vs fresh sweep workers: the same sweep of classification smoke items on 1 local worker,
with a fresh process per item (`--fresh-workers`) and with one long-lived worker (the default).

    python benchmarks/perf/sweep_workers.py [--pairs 3] [--seeds 0-5] [--methods baseline] [--threads 1]

Paired and rotated: pair i runs fresh then persistent when i is even, persistent then fresh when
odd (A B, B A, ...), each sweep into its own temporary results folder (nothing skipped), with a
pinned thread count (`--threads`). Prints each pair's wall times and ratio fresh / persistent, and
the ratios' min / median / max. A sweep's wall time includes the `kdbench sweep` process itself.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def sweep(fresh: bool, args: argparse.Namespace, results: Path) -> float:
    cmd = [sys.executable, "-m", "kdbench", "sweep", "--tasks", "classification", "--methods", args.methods,
           "--seeds", args.seeds, "--protocol", "smoke", "--executor", "local", "--workers", "1",
           "--threads", str(args.threads), "--results", str(results), "--logs", str(results / "logs")]
    if fresh:
        cmd.append("--fresh-workers")
    started = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--seeds", default="0-5", help="6 items by default")
    parser.add_argument("--methods", default="baseline")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.pairs):
            order = (True, False) if i % 2 == 0 else (False, True)
            wall = {fresh: sweep(fresh, args, Path(tmp) / f"pair{i}-{'fresh' if fresh else 'kept'}") for fresh in order}
            ratios.append(wall[True] / wall[False])
            print(f"pair {i} ({'fresh first' if order[0] else 'persistent first'}): fresh {wall[True]:.1f} s, "
                  f"persistent {wall[False]:.1f} s, fresh / persistent {ratios[-1]:.2f}x", flush=True)
    print(f"fresh / persistent over {len(ratios)} pairs: min {min(ratios):.2f}x, "
          f"median {statistics.median(ratios):.2f}x, max {max(ratios):.2f}x")


if __name__ == "__main__":
    main()
