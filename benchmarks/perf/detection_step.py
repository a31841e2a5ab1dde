"""Training throughput of the detection small tier, and where a step's time goes.

    python benchmarks/perf/detection_step.py [--steps 20] [--method gold]

Prints images/s of the card's student and teacher, the share of forward, matching, loss,
backward and optimiser time, and the teacher/student cost ratio, side by side in one run.
"""

from __future__ import annotations

import argparse
import time

import torch

from kdbench.adapters.detection.adapter import DetectionAdapter
from kdbench.protocol import load_protocol
from kdbench.runner.optim import build_optimizer


def profile(adapter: DetectionAdapter, role: str, steps: int, batch_size: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = adapter.build_model(role, frozenset({"layers"}))  # type: ignore[arg-type]
    optimizer = build_optimizer(adapter.protocol.card["train"]["optimizer"], model.parameters())
    batches = adapter.train_batches(batch_size, torch.Generator().manual_seed(0))
    parts = dict.fromkeys(("forward+matching", "loss", "backward", "optimizer"), 0.0)
    images = 0
    for i in range(steps + 3):
        batch = next(batches)
        t0 = time.perf_counter()
        out = adapter.forward(model, batch)
        t1 = time.perf_counter()
        loss = torch.stack(list(adapter.task_loss(out).values())).sum()
        t2 = time.perf_counter()
        optimizer.zero_grad()
        loss.backward()
        t3 = time.perf_counter()
        optimizer.step()
        t4 = time.perf_counter()
        if i >= 3:  # warm-up steps excluded
            for key, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                parts[key] += dt
            images += batch.images.shape[0]
    total = sum(parts.values())
    return {"images/s": images / total, **{k: v / total for k, v in parts.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--protocol", default="small")
    args = parser.parse_args()
    protocol = load_protocol("detection", args.protocol)
    adapter = DetectionAdapter(protocol, None, torch.device("cpu"))
    adapter.configure(frozenset({"layers", "union_matching"}))
    batch_size = int(protocol.card["train"]["batch_size"])
    rows = {role: profile(adapter, role, args.steps, batch_size) for role in ("student", "teacher")}
    print(f"detection/{protocol.name}, batch {batch_size}, {torch.get_num_threads()} threads, {args.steps} steps")
    print(f"{'':<18}" + "".join(f"{r:>12}" for r in rows))
    for key in rows["student"]:
        fmt = "{:>12.1f}" if key == "images/s" else "{:>12.0%}"
        print(f"{key:<18}" + "".join(fmt.format(rows[r][key]) for r in rows))
    ratio = rows["student"]["images/s"] / rows["teacher"]["images/s"]
    print(f"teacher step costs {ratio:.2f}× a student step")


if __name__ == "__main__":
    main()
