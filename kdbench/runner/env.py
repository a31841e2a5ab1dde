"""Provenance of a run: environment, hardware, model size and FLOPs."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

import kdbench


def git_commit() -> str | None:
    root = Path(kdbench.__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


#: CPU feature flags that select different floating-point kernels (and so different last bits).
ISA_FLAGS = ("sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
             "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "avx_vnni", "asimd", "sve", "sve2")


def cpu_info() -> dict[str, Any]:
    """The CPU model and its ISA flags that matter for numerics (Linux /proc/cpuinfo)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "Model") and model in (platform.processor(), platform.machine()):
                model = value.strip()
            elif key in ("flags", "Features"):
                flags |= set(value.split())
    except OSError:
        pass
    return {"model": model or "unknown", "flags": [f for f in ISA_FLAGS if f in flags]}


def environment() -> dict[str, Any]:
    """Software and CPU provenance: a CPU run is bit-identical only on the same CPU model,
    ISA flags and thread count (the kernels torch picks differ), else it varies like a seed."""
    return {"kdbench": kdbench.__version__, "git_commit": git_commit(),
            "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "cpu": cpu_info(), "threads": torch.get_num_threads()}


#: `cost.hardware` of a CUDA run's record written by a process that sees no GPU (the `failed` record
#: a sweep's own process writes for a GPU item whose worker died, from a Slurm login node or a Ray head).
UNSEEN_GPU = "unknown: the process that wrote this record sees no GPU"


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return UNSEEN_GPU
        return f"{torch.cuda.get_device_name(device)} ×{torch.cuda.device_count()}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads"


def peak_memory_mb(device: torch.device) -> float | None:
    """Peak memory of this process: allocated on its GPU, or its resident set on CPU (None for a
    CUDA device this process cannot see)."""
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return None
        return torch.cuda.max_memory_allocated(device) / 2**20
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def gpus_used(device: torch.device) -> list[dict[str, Any]]:
    """The GPU this process trains on, as an entry of a record's `cost.gpus`: `id` as the process's
    CUDA_VISIBLE_DEVICES names it (what its executor placed it on: an index, a `GPU-<uuid>` or a MIG
    id; the CUDA ordinal where the variable is unset), the device's `name` and `uuid` (the same
    physical GPU whatever the numbering). [] on CPU."""
    if device.type != "cuda":
        return []
    ordinal = device.index if device.index is not None else torch.cuda.current_device()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    entries = [e.strip() for e in listed.split(",") if e.strip()] if listed is not None else []
    props = torch.cuda.get_device_properties(ordinal)
    uuid = getattr(props, "uuid", None)
    return [{"id": entries[ordinal] if ordinal < len(entries) else str(ordinal), "name": str(props.name),
             "uuid": None if uuid is None else str(uuid)}]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def method_params(method: nn.Module, student: nn.Module) -> int:
    """Trainable parameters a method adds beside the student (DWPose's align conv, DHKD's extra
    head, ND's projector ...): its own, not the student's it may hold, nor frozen copies."""
    student_ids = {id(p) for p in student.parameters()}
    return sum(p.numel() for p in method.parameters() if p.requires_grad and id(p) not in student_ids)


def count_flops(model: nn.Module, example: Any) -> int | None:
    """Forward FLOPs of one sample (torch's FlopCounterMode; None where it cannot count)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(example)
        return int(counter.get_total_flops())
    except Exception:
        return None
    finally:
        model.train(was_training)


def resolve_device(choice: str) -> torch.device:
    from kdbench.errors import UsageError

    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available here; valid: auto, cpu")
    if choice not in ("cpu", "cuda"):
        raise UsageError(f"unknown device {choice!r}; valid: auto, cpu, cuda")
    return torch.device(choice)
