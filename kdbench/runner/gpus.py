"""Which GPUs a sweep may hand out and how its runs get them (`kdbench sweep --gpus-per-run N`).

Every executor reserves N GPUs per run, and a run sees exactly its own through
`CUDA_VISIBLE_DEVICES` (so its `cuda` is `cuda:0` of its own share):

- the local pool splits the GPUs this process sees into one set of N per slot, slot i getting
  entries [i·N, (i+1)·N) (`slot_gpus`), and starts the slot's worker with that
  `CUDA_VISIBLE_DEVICES` (N = 0: the empty string, so no worker sees a GPU);
- Ray schedules each task with `num_gpus=N` and sets the task's `CUDA_VISIBLE_DEVICES` to the GPU
  ids it reserved (docs.ray.io/en/latest/ray-core/scheduling/accelerators.html, "Using
  accelerators in Tasks and Actors"; `ray.get_gpu_ids()`). A task with `num_gpus=0` keeps the
  worker's own variable in current Ray (ray/_private/utils.py `set_visible_accelerator_ids` skips
  zero assignments unless `RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=1`, ray-project/ray#54868; older Ray
  set it to ''), so GPU-less runs are given `--device cpu` rather than trusted to find none;
- Slurm allocates `--gpus-per-node N` (submitit's `gpus_per_node`,
  facebookincubator.github.io/submitit/api.html, AutoExecutor "Update parameters") and sets each
  job step's `CUDA_VISIBLE_DEVICES` to the allocated GPUs (slurm.schedmd.com/gres.html, "GPU
  Management"); submitit's local executor gives every job GPUs `0..N-1` (its `visible_gpus`
  parameter, submitit/local/local.py `_submit_command`), so it does not place jobs apart.

The device a sweep's runs are given follows from N: N = 0 runs on CPU (`--device auto` stays CPU,
`--device cuda` is refused: it would share or miss GPUs nobody reserved), N > 0 runs on `cuda`
(`auto` becomes `cuda`, so a run that cannot see its GPU fails instead of training on CPU).
"""

from __future__ import annotations

import os

import torch

from kdbench.errors import UsageError, unknown

DEVICES = ("auto", "cpu", "cuda")


def visible_gpus() -> list[str]:
    """The GPUs this process may hand to its children, as `CUDA_VISIBLE_DEVICES` entries.

    With `CUDA_VISIBLE_DEVICES` set: its own entries as written (indices, `GPU-<uuid>` or MIG
    ids; a child given a subset of them sees those devices), at most `torch.cuda.device_count()`
    of them, as CUDA ignores the entries from the first invalid one on. Unset: the ordinals
    `0 .. device_count - 1` (interpreted by children in the same `CUDA_DEVICE_ORDER`, which they
    inherit).
    """
    count = torch.cuda.device_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(i) for i in range(count)]
    return [e.strip() for e in listed.split(",") if e.strip()][:count]


def sweep_device(device: str, gpus_per_run: int) -> str:
    """The `--device` a sweep's runs are given: `cpu` when no GPU is reserved, else `cuda`.

    Raises:
        UsageError: one line, for an unknown device, a negative N, `cuda` with N = 0 or `cpu`
            with N > 0.
    """
    if device not in DEVICES:
        raise unknown("device", device, DEVICES)
    if gpus_per_run < 0:
        raise UsageError(f"--gpus-per-run must be 0 (CPU runs) or more, got {gpus_per_run}")
    if device == "cuda" and gpus_per_run == 0:
        raise UsageError("--device cuda: the sweep reserves no GPU for its runs (--gpus-per-run 0), so they "
                         "would share or miss GPUs; pass --gpus-per-run N (N >= 1), or --device auto or cpu")
    if device == "cpu" and gpus_per_run > 0:
        raise UsageError(f"--device cpu with --gpus-per-run {gpus_per_run}: CPU runs reserve no GPU; "
                         "use --device cuda (or auto), or --gpus-per-run 0")
    return "cuda" if gpus_per_run > 0 else "cpu"


def _source(visible: list[str]) -> str:
    """Where `visible` came from, for a refusal."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return f"(torch.cuda.device_count() is {len(visible)})"
    return f"(CUDA_VISIBLE_DEVICES={listed!r}, of which torch sees {len(visible)})"


def check_visible(gpus_per_run: int, slots: int, visible: list[str], flag: str | None = "--workers") -> None:
    """Refuse a request this machine's GPUs cannot meet: `slots` runs at once of N GPUs each
    (`flag`: the option that set `slots`; None for one run at a time, Ray queueing the rest).

    Raises:
        UsageError: one line naming the request, the GPUs visible and what fits.
    """
    if gpus_per_run <= 0:
        return
    if not visible:
        raise UsageError(f"--gpus-per-run {gpus_per_run}: no CUDA GPU is visible here {_source(visible)}; "
                         "valid here: --gpus-per-run 0 (runs on CPU)")
    if slots * gpus_per_run <= len(visible):
        return
    fits = len(visible) // gpus_per_run
    asked = f"{flag} {slots} × --gpus-per-run {gpus_per_run}" if flag else f"--gpus-per-run {gpus_per_run}"
    valid = (f"{flag} {fits} or fewer at --gpus-per-run {gpus_per_run}" if fits and flag
             else f"--gpus-per-run {len(visible)} or fewer")
    raise UsageError(f"{asked} needs {slots * gpus_per_run} GPUs, {len(visible)} visible here {_source(visible)}: "
                     f"{', '.join(visible)}; valid: {valid}")


def slot_gpus(slots: int, gpus_per_run: int, visible: list[str]) -> list[list[str]]:
    """Slot i's GPUs, `visible[i·N : (i+1)·N]` (disjoint; all empty when N = 0).

    Raises:
        UsageError: when the slots need more GPUs than are visible (`check_visible`).
    """
    check_visible(gpus_per_run, slots, visible)
    return [visible[i * gpus_per_run:(i + 1) * gpus_per_run] for i in range(slots)]
