"""Framework overhead: kdbench's training loop vs a bare hand-written PyTorch loop.

    python benchmarks/perf/framework_overhead.py [--protocol small] [--epochs 5] [--repeats 3]

Both train the card's classification student with `baseline` (cross-entropy) on the same data:
same model and initialisation, the same (seed, epoch) batch order and augmentation function,
the same SGD + cosine schedule. The bare loop is what one would write by hand: index, augment,
forward, CE, backward, step. kdbench's `fit` adds Outputs, the method's terms, the NaN check,
per-epoch checkpoints (included; also shown without them) and the progress bar. Runs alternate
in a rotating order, the median of `--repeats` is reported; the goal is ≤ 1.05×.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from kdbench.adapters.classification import data as D
from kdbench.adapters.classification.adapter import ClassificationAdapter
from kdbench.methods.base import MethodContext
from kdbench.methods.baseline import Baseline
from kdbench.protocol import apply_overrides, load_protocol
from kdbench.runner.optim import build_optimizer, build_schedule
from kdbench.runner.train import Job, epoch_seed, fit, probe_outputs


def kdbench_loop(adapter: ClassificationAdapter, folder: Path | None) -> float:
    """`fit` as `kdbench run` calls it; `folder` None: without the per-epoch checkpoints."""
    torch.manual_seed(0)
    model = adapter.build_model("student", frozenset())
    train = dict(adapter.protocol.card["train"], eval_every=0)
    ctx = MethodContext(probe_outputs(adapter, model), None, adapter.train_size, int(train["epochs"]))
    ckpt = folder / "last.pt" if folder is not None else None
    if ckpt is not None:
        ckpt.unlink(missing_ok=True)
    job = Job(adapter, model, Baseline(Baseline.Config(), ctx), None, train, 0, ckpt)
    started = time.perf_counter()
    fit(job)
    return time.perf_counter() - started


def bare_loop(adapter: ClassificationAdapter) -> float:
    torch.manual_seed(0)
    model = adapter.build_model("student", frozenset())
    train = adapter.protocol.card["train"]
    epochs, batch_size = int(train["epochs"]), int(train["batch_size"])
    optimizer = build_optimizer(train["optimizer"], model.parameters())
    schedule = build_schedule(optimizer, train["schedule"], adapter.steps_per_epoch(batch_size), epochs)
    images, labels = adapter.train_set.images, adapter.train_set.labels
    started = time.perf_counter()
    for epoch in range(epochs):
        generator = torch.Generator().manual_seed(epoch_seed(0, epoch))
        model.train()
        for idx in D.batches(len(images), batch_size, generator):
            x = D.augment(images[idx], adapter.augmentation, generator)
            loss = F.cross_entropy(model(x).logits, labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", default="small")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    protocol = apply_overrides(load_protocol("classification", args.protocol), {"train.epochs": args.epochs})
    adapter = ClassificationAdapter(protocol, None, torch.device("cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        loops: dict[str, Callable[[], float]] = {
            "bare PyTorch loop": lambda: bare_loop(adapter),
            "kdbench fit": lambda: kdbench_loop(adapter, Path(tmp)),
            "  without checkpoints": lambda: kdbench_loop(adapter, None),
        }
        times: dict[str, list[float]] = {name: [] for name in loops}
        bare_loop(adapter)  # warm-up (allocator, kernels)
        order = list(loops)
        for r in range(args.repeats):  # rotated, so that no loop always runs first
            for name in order[r % len(order):] + order[:r % len(order)]:
                times[name].append(loops[name]())
    base = statistics.median(times["bare PyTorch loop"])
    print(f"classification/{protocol.name}, baseline, {args.epochs} epochs, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"  {name:<22} {med:7.2f} s   {med / base:5.3f}×   runs: {', '.join(f'{v:.2f}' for v in values)}")
    print("  goal: kdbench fit ≤ 1.05× the bare loop")


if __name__ == "__main__":
    main()
