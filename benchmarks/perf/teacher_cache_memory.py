"""Teacher-output cache memory: peak resident memory of caching one epoch, in-RAM path vs memory-mapped.

    python benchmarks/perf/teacher_cache_memory.py [--rounds 3] [--mib 512] [--vocab 10000] [--batch 16]
        [--tokens 32] [--topk K] [--threads 1] [--dir DIR]

Each measurement is a fresh process, pinned to `--threads` threads (OMP_NUM_THREADS, MKL_NUM_THREADS,
torch.set_num_threads) and to glibc's mmap threshold (MALLOC_MMAP_THRESHOLD_=1 MiB: otherwise the
allocator's dynamic threshold keeps or returns freed step buffers by chance, ±100 MiB), that
caches one epoch of synthetic (B, T, V) float32 teacher token logits (`--mib` MiB of full logits
in all, `--batch` × `--tokens` positions a step, seeded) into a fresh folder under `--dir` and
publishes it:

- old: the path before issue #21, `InRamCache` below (the logic of kdbench.runner.teacher_cache
  at commit ffb9256): every step's arrays kept in lists, concatenated and np.save'd at the end;
- new: kdbench.runner.teacher_cache.TeacherCache, its files sized from the epoch's rows and written
  through memory maps step by step;

- none: the same steps without a cache (the logits alone), the floor both paths stand on.

Peak RSS is the process's ru_maxrss, reported over the RSS just before the epoch starts (imports
done): what the epoch added, of which one step's logits and the allocator's reuse of them are in
every path (the `none` row). Paired and rotated: round i runs the three in the order old, new, none
shifted by i. Prints each round, then the old / new ratios of the added peak and of the wall time
(min / median / max), and the median peak of each path over `none`. `--topk K` caches top-K
log-probabilities instead of full logits.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


class InRamCache:
    """The write path of the cache before issue #21: the epoch kept in RAM, then concatenated."""

    def __init__(self, root: Path, topk: int | None) -> None:
        self.root, self.topk = root, topk
        self.pending: dict[str, list[np.ndarray]] = {}

    def start_epoch(self, epoch: int) -> None:
        self.pending = {}

    def add(self, teacher: object) -> object:
        from kdbench.runner.teacher_cache import expand_topk

        seen = {}
        for name, head in teacher.heads.items():  # type: ignore[attr-defined]
            flat = head.logits.detach().float().reshape(-1, head.logits.shape[-1]).cpu()
            if self.topk is None:
                parts, seen[name] = {f"{name}.logits": flat.numpy()}, flat
            else:
                values, index = torch.log_softmax(flat, -1).topk(min(self.topk, flat.shape[-1]), -1)
                parts = {f"{name}.values": values.numpy(), f"{name}.index": index.int().numpy()}
                seen[name] = expand_topk(values, index, flat.shape[-1])
            for k, v in parts.items():
                self.pending.setdefault(k, []).append(v)
        return seen

    def finish_epoch(self) -> None:
        tmp = Path(tempfile.mkdtemp(prefix=".epoch0.", dir=self.root))
        for key, arrays in self.pending.items():
            np.save(tmp / f"{key}.npy", np.concatenate(arrays))
        os.rename(tmp, self.root / "epoch0")
        self.pending = {}


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(args: argparse.Namespace) -> None:
    """One epoch cached by one path; prints {before, peak, seconds, bytes} as JSON."""
    from kdbench.outputs import Head, Outputs
    from kdbench.runner.teacher_cache import TeacherCache

    torch.set_num_threads(args.threads)
    root = Path(args.child_root)
    root.mkdir(parents=True)
    rows = args.batch * args.tokens
    steps = max(1, (args.mib << 20) // (rows * args.vocab * 4))
    cache = {"old": lambda: InRamCache(root, args.topk), "none": lambda: None,
             "new": lambda: TeacherCache(root, args.topk, lambda epoch: {"token": steps * rows})}[args.child]()
    generator = torch.Generator().manual_seed(0)
    before = _rss_mib()
    started = time.perf_counter()
    if cache is not None:
        cache.start_epoch(0)
    for _ in range(steps):
        logits = torch.randn(args.batch, args.tokens, args.vocab, generator=generator)
        if cache is not None:
            cache.add(Outputs(heads={"token": Head(logits, kind="categorical")}))
        del logits
    if cache is not None:
        cache.finish_epoch()
    seconds = time.perf_counter() - started
    size = sum(f.stat().st_size for f in root.glob("epoch0/*.npy"))
    print(json.dumps({"before": before, "peak": _rss_mib(), "seconds": seconds, "bytes": size, "steps": steps}))


def measure(path: str, args: argparse.Namespace, folder: Path) -> dict[str, float]:
    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
           "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}  # glibc: a freed step's logits go back to the system
    cmd = [sys.executable, __file__, "--child", path, "--child-root", str(folder), "--mib", str(args.mib),
           "--vocab", str(args.vocab), "--batch", str(args.batch), "--tokens", str(args.tokens),
           "--threads", threads] + (["--topk", str(args.topk)] if args.topk else [])
    done = subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
    shutil.rmtree(folder)
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mib", type=int, default=512, help="one epoch's full float32 logits, MiB")
    parser.add_argument("--vocab", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--topk", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dir", type=Path, default=None, help="where the caches are written (default: a temp folder)")
    parser.add_argument("--child", choices=("old", "new", "none"), help=argparse.SUPPRESS)
    parser.add_argument("--child-root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    mode = f"top-{args.topk}" if args.topk else "full float32"
    print(f"one epoch of {args.mib} MiB of (B={args.batch}, T={args.tokens}, V={args.vocab}) float32 logits, "
          f"cached as {mode}; {args.threads} thread(s); peak RSS over the RSS before the epoch", flush=True)
    paths = ("old", "new", "none")
    peak_ratios, time_ratios = [], []
    over_none: dict[str, list[float]] = {"old": [], "new": []}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for i in range(args.rounds):
            order = paths[i % 3:] + paths[:i % 3]
            got = {p: measure(p, args, Path(tmp) / f"round{i}-{p}") for p in order}
            added = {p: got[p]["peak"] - got[p]["before"] for p in got}
            peak_ratios.append(added["old"] / max(added["new"], 1e-9))
            time_ratios.append(got["old"]["seconds"] / got["new"]["seconds"])
            for p in over_none:
                over_none[p].append(got[p]["peak"] - got["none"]["peak"])
            print(f"round {i} ({', '.join(order)}): "
                  + "; ".join(f"{p} peak {got[p]['peak']:.0f} MiB (+{added[p]:.0f}), {got[p]['seconds']:.2f} s"
                              for p in paths)
                  + f"; {got['new']['bytes'] / 2**20:.1f} MiB on disk", flush=True)
    for name, ratios in (("added peak RSS", peak_ratios), ("wall time", time_ratios)):
        print(f"old / new {name} over {len(ratios)} rounds: min {min(ratios):.2f}x, "
              f"median {statistics.median(ratios):.2f}x, max {max(ratios):.2f}x")
    print("median peak RSS over no cache: " + ", ".join(
        f"{p} {statistics.median(v):+.0f} MiB" for p, v in over_none.items()))


if __name__ == "__main__":
    main()
