"""Time `kdbench site build` on 10,000 synthetic result records (the target is under 10 s).

Writes valid records (the shipped schema) for 5 tasks × 4 protocol cards × 25 methods (the
teacher included) × 20 seeds into a temporary results folder, each with a 20-epoch history, then
times the build alone (writing the records is not timed) and prints the time and the counts.

    .venv/bin/python benchmarks/perf/site_build.py [--records 10000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kdbench.records import record_path
from kdbench.site.build import build_site
from kdbench.site.catalog import load_catalog

TASKS = ["classification", "detection", "pose", "translation", "ood"]
PROTOCOLS = [("small", "small"), ("medium", "medium"), ("standard", "standard"), ("standard-b", "standard")]
TEMPLATE: dict[str, Any] = {
    "schema_version": 1, "task": "", "tier": "", "protocol": {"name": "", "sha256": ""},
    "method": {"name": "", "teacher": "external", "hparams": {"temperature": 4.0}}, "seed": 0,
    "student": {"arch": "convnet", "params": 18482, "flops": 304768, "checkpoint_sha256": None},
    "teacher": None, "metrics": {"primary": "top1", "direction": "higher", "values": {}}, "history": [],
    "cost": {"train_seconds": 0.0, "peak_memory_mb": 800.0, "device": "cpu", "hardware": "synthetic"},
    "environment": {"kdbench": "0.1.0", "git_commit": None, "torch": "2.0", "python": "3.11"},
    "status": "ok", "error": None, "created": "2026-01-01T00:00:00+00:00",
    "spec": {"overrides": {}, "world_size": 1, "global_batch": 64, "device": "cpu"},
}


def synthetic_records(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """`n` records: settings × methods × seeds, filled setting by setting."""
    rng = random.Random(seed)
    methods = [*sorted(load_catalog()["methods"])][:14]
    methods += [f"method{i:02d}" for i in range(24 - len(methods))] + ["teacher"]
    seeds = max(1, n // (len(TASKS) * len(PROTOCOLS) * len(methods)))
    out: list[dict[str, Any]] = []
    for task in TASKS:
        for proto, tier in PROTOCOLS:
            sha = hashlib.sha256(f"{task}/{proto}".encode()).hexdigest()
            for k, method in enumerate(methods):
                effect = rng.gauss(0, 0.5) + (2.0 if method == "teacher" else 0.0)
                for s in range(seeds):
                    if len(out) == n:
                        return out
                    r = copy.deepcopy(TEMPLATE)
                    r.update(task=task, tier=tier, seed=s, created=f"2026-01-01T00:{k:02d}:{s % 60:02d}+00:00")
                    r["protocol"] = {"name": proto, "sha256": sha}
                    r["method"]["name"] = method
                    top1 = 90 + effect + rng.gauss(0, 0.4)
                    r["metrics"]["values"] = {"top1": top1, "top5": 99.0 + rng.random(), "nll": rng.random(),
                                              "ece": 2 * rng.random(), "aurc": 3 * rng.random()}
                    r["history"] = [{"epoch": e, "loss": 2.0 / (e + 1), "lr": 0.05, "seconds": 0.4,
                                     "terms": {"task/cls": 1.0 / (e + 1), f"{method}/cls": 0.1}} for e in range(20)]
                    r["cost"]["train_seconds"] = 8.0 + rng.random()
                    out.append(r)
    return out


def _cpu() -> tuple[float, float]:
    """(this process, its finished children) user + system CPU seconds."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=10_000)
    p.add_argument("--keep", type=Path, default=None, help="write the site here and keep it")
    p.add_argument("--jobs", type=int, default=None, help="rendering processes (as `kdbench site build --jobs`)")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kdbench-site-bench-"))
    try:
        results = work / "results"
        records = synthetic_records(args.records)
        for r in records:
            path = record_path(results, r["task"], r["protocol"]["name"], r["method"]["name"], r["seed"])
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(r))
        os.sync()  # the records' writeback is the setup's cost, not the build's
        out = args.keep or work / "site"
        cpu0 = _cpu()
        start = time.perf_counter()
        done = build_site(results, out, jobs=args.jobs)
        seconds = time.perf_counter() - start
        parent, workers = (a - b for a, b in zip(_cpu(), cpu0, strict=True))
        print(f"site build: {len(records)} records, {done.settings} settings, {done.methods} methods, "
              f"{done.pages} pages in {seconds:.2f} s wall (target < 10 s); CPU {parent:.1f} s in this process "
              f"+ {workers:.1f} s in rendering workers; load average {os.getloadavg()[0]:.1f} on "
              f"{os.cpu_count()} CPUs")
        return 0 if seconds < 10 else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
