"""The record checks of benchmarks/perf/gpu_check.sh: each prints one line and exits 0 when the
check passes, 1 when it fails.

    python benchmarks/perf/gpu_check.py record FILE --device cuda --precision bf16|fp32|card [--world 2]
    python benchmarks/perf/gpu_check.py distinct FILE FILE ...
    python benchmarks/perf/gpu_check.py throughput FILE --data-root DIR [--set KEY=VALUE ...]

`record`: the record is valid and ok, ran on `--device` at `--precision` (`card`: bf16 where the
card sets `train.amp: bf16` and the run is on CUDA, else fp32) with `--world` ranks, and on CUDA
names one GPU per rank (`cost.gpus`). `distinct`: the records trained on different
GPUs (a sweep's slots). `throughput`: the training set's size (the adapter's `train_size`: images
for detection, person instances for pose) over the last epoch's seconds, and the peak memory
(`cost.peak_memory_mb`: allocated on the GPU, the process's resident set on CPU).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def _load(path: str) -> dict[str, Any]:
    from kdbench.records import read_record, validation_errors

    record = read_record(Path(path))
    errors = validation_errors(record)
    if errors:
        raise SystemExit(f"{path}: invalid record: {errors[0]}")
    return record


def _gpus(record: dict[str, Any]) -> str:
    gpus = record["cost"].get("gpus") or []
    return ", ".join(f"GPU {g['id']} ({g['name']})" for g in gpus) or "no GPU"


def check_record(args: argparse.Namespace) -> str:
    record = _load(args.file)
    spec, cost = record["spec"], record["cost"]
    if record["status"] != "ok":
        raise SystemExit(f"status {record['status']}: {record.get('error')}")
    precision = args.precision
    if precision == "card":
        amp = (spec["card"].get("train") or {}).get("amp")
        precision = "bf16" if amp == "bf16" and args.device == "cuda" else "fp32"
    wrong = [f"{name} {got} (expected {want})" for name, got, want in (
        ("device", cost["device"], args.device), ("precision", spec["precision"], precision),
        ("world size", spec["world_size"], args.world)) if got != want]
    gpus = cost.get("gpus") or []
    if args.device == "cuda" and len(gpus) != args.world:
        wrong.append(f"{len(gpus)} GPUs in cost.gpus (expected one per rank, {args.world})")
    if wrong:
        raise SystemExit("; ".join(wrong))
    peak = cost["peak_memory_mb"]
    return (f"ok on {cost['device']} ({_gpus(record)}), {spec['precision']}, {spec['world_size']} rank(s), "
            f"{cost['train_seconds']:.1f} s training, peak memory {peak if peak is None else round(peak)} MiB")


def check_distinct(args: argparse.Namespace) -> str:
    records = [_load(f) for f in args.files]
    ids = [tuple(g["uuid"] or g["id"] for g in r["cost"].get("gpus") or []) for r in records]
    if len(set(ids)) != len(ids):
        raise SystemExit(f"runs shared a GPU: {', '.join(_gpus(r) for r in records)}")
    return f"each run on its own GPU: {'; '.join(_gpus(r) for r in records)}"


def throughput(args: argparse.Namespace) -> str:
    import torch

    from kdbench.protocol import parse_sets
    from kdbench.runner.spec import TEACHER_ONLY, RunOptions, resolve

    record = _load(args.file)
    if record["status"] != "ok":
        raise SystemExit(f"status {record['status']}: {record.get('error')}")
    method = record["method"]["name"]
    spec = resolve(RunOptions(task=record["task"], method=TEACHER_ONLY if method == "teacher" else method,
                              protocol=args.protocol or record["protocol"]["name"], sets=parse_sets(args.sets)))
    if spec.protocol.sha256 != record["protocol"]["sha256"]:
        raise SystemExit("--protocol and --set do not give the record's card")
    size = spec.adapter_cls(spec.protocol, Path(args.data_root), torch.device("cpu")).train_size
    unit = "images" if record["task"] == "detection" else "instances"
    last = record["history"][-1]
    peak = record["cost"]["peak_memory_mb"]
    where = "GPU memory allocated" if record["cost"]["device"] == "cuda" else "memory (CPU resident set)"
    return (f"{size} {unit} in {last['seconds']:.2f} s = {size / last['seconds']:.1f} {unit}/s (epoch "
            f"{last['epoch'] + 1} of {len(record['history'])}), peak {where} "
            f"{'n/a' if peak is None else f'{peak:.0f} MiB'}, on {_gpus(record)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="check", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("file")
    rec.add_argument("--device", required=True)
    rec.add_argument("--precision", required=True)
    rec.add_argument("--world", type=int, default=1)
    dis = sub.add_parser("distinct")
    dis.add_argument("files", nargs="+")
    thr = sub.add_parser("throughput")
    thr.add_argument("file")
    thr.add_argument("--data-root", required=True)
    thr.add_argument("--protocol", default=None, help="the card the run named (default: the record's name)")
    thr.add_argument("--set", dest="sets", action="append", default=[])
    args = parser.parse_args()
    checks = {"record": check_record, "distinct": check_distinct, "throughput": throughput}
    try:
        print(checks[args.check](args))
    except SystemExit as e:
        print(e.code if isinstance(e.code, str) else f"failed ({e.code})")
        return 1
    except Exception as e:  # the check itself could not run: a failure, said in one line
        print(f"{type(e).__name__}: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
