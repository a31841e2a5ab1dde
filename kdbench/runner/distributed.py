"""One run on many processes: `torchrun --nproc_per_node N -m kdbench run ...`.

Data parallel with the card's global batch kept: every rank draws the same global batch (the
order derives from (seed, epoch) alone) and trains on its contiguous 1/N shard; after backward
the gradients of every trainable parameter (the student's and the method's own modules) are
averaged across ranks with one coalesced all-reduce — what DistributedDataParallel computes,
without its bucketed overlap, and equally valid for modules DDP cannot wrap (a method's
projectors, learnable layer weights). Per-step method memories stay identical on every rank:
`after_step` sees the whole global batch's detached head outputs (gathered from all ranks) and
the loss terms averaged across ranks. Only rank 0 evaluates, checkpoints and writes records.
These collectives are `World`'s methods; a run on one process gets `SOLO`, the world of one
process, whose collectives do nothing, so the train loop never asks how many processes it has.

Known difference from one process: BatchNorm statistics are per rank (SyncBatchNorm needs a
GPU), so the result matches a single-process run of the same global batch only up to that —
the test states its tolerance.

On CUDA each rank takes GPU LOCAL_RANK over NCCL; where a node's ranks outnumber its GPUs (two
ranks on a one-GPU machine: the multi-rank part of benchmarks/perf/gpu_check.sh) they share the
GPUs round-robin over gloo (`rank_placement`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from kdbench.outputs import Head, Outputs


@dataclass(frozen=True)
class World:
    """The processes one run trains on: this one is rank `rank` of `size`, and the collectives
    below are over all of them. A world of one process (`SOLO`, what a run outside torchrun gets)
    makes every collective do nothing: its batch is not cut, its gradients, loss terms and heads
    are its own, and no process group is needed. So the train loop calls them unconditionally.
    """

    rank: int
    size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, batch: Any) -> Any:
        """This rank's contiguous 1/N of a batch (`shard`); one process: the batch itself."""
        return batch if self.size == 1 else shard(batch, self)

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """grad ← mean over ranks, in one flat all-reduce (parameters without a grad count as 0);
        one process: the gradients stay as they are."""
        if self.size == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.size
        offset = 0
        for p, g in zip(params, grads, strict=True):
            n = g.numel()
            p.grad = flat[offset:offset + n].view_as(p)
            offset += n

    def all_finite(self, loss: Tensor) -> bool:
        """Whether the loss is finite on every rank (all ranks stop together, none hangs)."""
        ok = torch.isfinite(loss.detach()).float().reshape(1)
        if self.size > 1:
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        return bool(ok.item())

    def global_losses(self, loss: Tensor, terms: dict[str, Tensor]) -> tuple[float, dict[str, Tensor]]:
        """The step's loss and its detached terms as one process would report them for the global
        batch: each term averaged over ranks, the loss their sum; one process: its own, as they are."""
        if self.size == 1:
            return float(loss.detach()), terms
        if not terms:
            return 0.0, terms
        stacked = torch.stack([v.detach().float() for v in terms.values()])
        dist.all_reduce(stacked)
        stacked /= self.size
        averaged = {k: stacked[i] for i, k in enumerate(terms)}
        return float(sum(averaged.values())), averaged

    def gather_heads(self, outputs: Outputs) -> Outputs:
        """The global batch's final heads and ids on every rank (for per-sample memories); one
        process: its own."""
        if self.size == 1:
            return outputs
        local = {"heads": {k: (h.logits, h.target, h.mask, h.weight, h.matched) for k, h in outputs.heads.items()},
                 "ids": outputs.ids}
        parts: list[Any] = [None] * self.size
        dist.all_gather_object(parts, _cpu(local))
        device = next(iter(outputs.heads.values())).logits.device

        def cat(values: list[Any]) -> Any:
            return None if values[0] is None else torch.cat(values).to(device)

        heads = {name: Head(*(cat([p["heads"][name][i] for p in parts]) for i in range(5)), kind=head.kind)
                 for name, head in outputs.heads.items()}
        return Outputs(heads=heads, ids=cat([p["ids"] for p in parts]))

    def gather_lists(self, items: list[Any]) -> list[Any]:
        """Every rank's `items` concatenated in rank order, on every rank (picklable items)."""
        if self.size == 1:
            return items
        parts: list[Any] = [None] * self.size
        dist.all_gather_object(parts, items)
        return [x for part in parts for x in part]

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()


#: The world of a run on one process, whose collectives do nothing.
SOLO = World(0, 1)


def rank_placement(local_rank: int, local_world: int, gpus: int) -> tuple[str, int]:
    """(backend, CUDA device index) of a rank on CUDA: NCCL on GPU `local_rank` where the node has a
    GPU per rank; where its `local_world` ranks outnumber its `gpus`, GPU `local_rank mod gpus` over
    gloo, since NCCL refuses two ranks on one GPU ("Duplicate GPU detected") while gloo all-reduces
    and broadcasts CUDA tensors (torch.distributed's backend table, docs.pytorch.org/docs/stable/
    distributed.html#backends) and gathers objects through the CPU."""
    if gpus < 1:
        raise ValueError("rank_placement needs at least one GPU")
    if local_world <= gpus:
        return "nccl", local_rank
    return "gloo", local_rank % gpus


def init_from_env(device: torch.device) -> World:
    """Join the process group torchrun describes (WORLD_SIZE > 1), else SOLO (one process)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return SOLO
    if not dist.is_initialized():
        backend = "gloo"
        if device.type == "cuda":
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(size)))
            backend, index = rank_placement(int(os.environ.get("LOCAL_RANK", "0")), local_world,
                                            torch.cuda.device_count())
            torch.cuda.set_device(index)
        dist.init_process_group(backend)
    return World(dist.get_rank(), dist.get_world_size())


def current() -> World:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return World(dist.get_rank(), dist.get_world_size())
    return SOLO


def shard(batch: Any, world: World) -> Any:
    """This rank's contiguous 1/N of a batch: tensors and lists whose length is the batch's."""
    size = _batch_size(batch)
    if size is None:
        raise TypeError(f"cannot shard a batch of type {type(batch).__name__} across ranks")
    bounds = [size * r // world.size for r in range(world.size + 1)]
    lo, hi = bounds[world.rank], bounds[world.rank + 1]
    return _slice(batch, size, lo, hi)


def _batch_size(batch: Any) -> int | None:
    if isinstance(batch, Tensor):
        return int(batch.shape[0])
    if isinstance(batch, (list, tuple)) and batch and not isinstance(batch[0], (Tensor, list, tuple)):
        return len(batch)
    values = (dataclasses.asdict(batch).values() if dataclasses.is_dataclass(batch) and not isinstance(batch, type)
              else batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else [])
    for value in values:
        if isinstance(value, Tensor) and value.dim() > 0:
            return int(value.shape[0])
    return None


def _slice(value: Any, size: int, lo: int, hi: int) -> Any:
    if isinstance(value, Tensor):
        return value[lo:hi] if value.dim() > 0 and value.shape[0] == size else value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{f.name: _slice(getattr(value, f.name), size, lo, hi)
                                             for f in dataclasses.fields(value)})
    if isinstance(value, dict):
        return {k: _slice(v, size, lo, hi) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if len(value) == size:
            return type(value)(value[lo:hi])
        return type(value)(_slice(v, size, lo, hi) for v in value)
    return value


def _cpu(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _cpu(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_cpu(v) for v in value)
    return value

