"""KD cost: a teacher-based method with cached teacher outputs vs `baseline`, and online.

    python benchmarks/perf/kd_cost.py [--protocol small] [--epochs 5] [--repeats 3] [--method kd]

Trains the classification student for `--epochs` with `baseline`, with `--method` reading the
teacher's logits from kdbench's teacher-output cache (filled by one untimed run first, as the
first method of a sweep would), and with the teacher run online on every batch. Runs alternate;
medians are reported as ratios to `baseline`. Goal: cached ≤ 1.10×. The teacher is the card's
(trained once into $KDBENCH_CACHE if it is not there yet; that is not timed).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from kdbench.adapters.classification.adapter import ClassificationAdapter
from kdbench.methods import get_method
from kdbench.methods.base import MethodContext
from kdbench.protocol import apply_overrides, load_protocol
from kdbench.runner.teacher_cache import TeacherCache
from kdbench.runner.teachers import get_teacher
from kdbench.runner.train import Job, fit, probe_outputs


def timed(adapter: ClassificationAdapter, method: str, teacher: torch.nn.Module | None,
          cache: TeacherCache | None) -> float:
    torch.manual_seed(0)
    model = adapter.build_model("student", frozenset())
    train = dict(adapter.protocol.card["train"], eval_every=0)
    ctx = MethodContext(probe_outputs(adapter, model), probe_outputs(adapter, teacher) if teacher else None,
                        adapter.train_size, int(train["epochs"]))
    cls = get_method(method)
    job = Job(adapter, model, cls(cls.Config(), ctx), teacher, train, 0, None, teacher_cache=cache)
    started = time.perf_counter()
    fit(job)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", default="small")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--method", default="kd")
    args = parser.parse_args()
    protocol = apply_overrides(load_protocol("classification", args.protocol), {"train.epochs": args.epochs})
    adapter = ClassificationAdapter(protocol, None, torch.device("cpu"))
    teacher = get_teacher(adapter, int(protocol.get("teacher.seed", 0)), None).model
    with tempfile.TemporaryDirectory() as tmp:
        cache = TeacherCache(Path(tmp) / "teacher-outputs")
        timed(adapter, args.method, teacher, cache)  # fills the cache (untimed), as a sweep's first run
        rows: dict[str, list[float]] = {"baseline": [], f"{args.method}, cached teacher": [],
                                        f"{args.method}, teacher online": []}
        for _ in range(args.repeats):
            rows["baseline"].append(timed(adapter, "baseline", None, None))
            rows[f"{args.method}, cached teacher"].append(timed(adapter, args.method, teacher, cache))
            rows[f"{args.method}, teacher online"].append(timed(adapter, args.method, teacher, None))
        size = cache.nbytes()
    base = statistics.median(rows["baseline"])
    print(f"classification/{protocol.name}, {args.epochs} epochs, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}; teacher cache {size / 1e6:.2f} MB")
    for name, values in rows.items():
        med = statistics.median(values)
        print(f"  {name:<26} {med:7.2f} s   {med / base:5.3f}×   runs: {', '.join(f'{v:.2f}' for v in values)}")
    print("  goal: cached ≤ 1.10× baseline")


if __name__ == "__main__":
    main()
