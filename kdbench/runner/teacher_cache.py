"""Teacher outputs computed once and read back: a cache of the frozen teacher's head logits.

Every adapter draws an epoch's batches from (seed, epoch) alone, so for a given teacher, card,
seed, epoch and step the teacher sees the very same inputs in every run — whatever the method.
The first run to train an epoch writes that epoch's teacher logits (all steps, one flat
float32 array per head, memory-mapped when read, published atomically by renaming a finished
folder); every later run of the same (teacher, card, seed) — the other methods of a sweep —
reads them instead of running the teacher. Full-precision entries are the exact logits, so a
cached run's result is bit-identical to an online one.

For token logits over a large vocabulary, `train.teacher_cache_topk: k` keeps only each
position's k largest log-probabilities and their indices; reading back gives logits whose
softmax puts exactly those probabilities on the k tokens and spreads the remaining mass
uniformly over the other V − k (one remainder bucket). That changes the result: it is opt-in
per card, and the record says so.

The cache serves methods that read only the teacher's final heads; with a teacher's features,
per-layer outputs or attentions (or an adapter that has not declared its teacher inputs
method-independent, `teacher_inputs_fixed`) the runner says why, in plain words, and runs the
teacher on every batch.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from kdbench.outputs import Outputs

#: needs that mean a method reads more of the teacher than its final heads
_BEYOND_HEADS = frozenset({"layers", "features", "attentions", "teacher_pass"})


def why_online(adapter: Any, method_cls: Any) -> str | None:
    """None when the teacher's outputs may be cached for this run, else the reason not to."""
    if os.environ.get("KDBENCH_TEACHER_CACHE", "1") == "0":
        return "the cache is turned off (KDBENCH_TEACHER_CACHE=0)"
    if not adapter.teacher_inputs_fixed:
        return (f"the {adapter.task} task does not promise that the teacher sees the same batches whatever "
                "the method, so another run's teacher outputs cannot be reused")
    if "sequence_targets" in method_cls.needs:
        return f"method {method_cls.name} trains on the teacher's translations instead of the references"
    beyond = set(method_cls.needs) & _BEYOND_HEADS
    if beyond:
        return (f"method {method_cls.name} reads the teacher's {', '.join(sorted(beyond))}; the cache holds "
                "only its final predictions")
    return None


@dataclass
class TeacherCache:
    """One (teacher, card, seed, world rank) folder with one subfolder per finished epoch."""

    root: Path
    topk: int | None = None

    def __post_init__(self) -> None:
        self._epoch: int | None = None
        self._read: dict[str, np.ndarray] | None = None
        self._offsets: list[dict[str, int]] = []
        self._shapes: list[dict[str, list[int]]] = []
        self._pending: dict[str, list[np.ndarray]] = {}

    def start_epoch(self, epoch: int) -> None:
        self._epoch, self._pending, self._offsets, self._shapes = epoch, {}, [], []
        folder = self.root / f"epoch{epoch}"
        self._read = None
        if (folder / "meta.json").is_file():
            meta = json.loads((folder / "meta.json").read_text())
            self._offsets, self._shapes = meta["offsets"], meta["shapes"]
            self._read = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in meta["arrays"]}

    @property
    def hit(self) -> bool:
        return self._read is not None

    def teacher(self, step: int, student: Outputs) -> Outputs:
        """The cached teacher Outputs of this epoch's `step`; targets and masks from the student's."""
        assert self._read is not None
        heads = {}
        for name, head in student.heads.items():
            shape, start = self._shapes[step][name], self._offsets[step][name]
            n = int(np.prod(shape[:-1]))
            if self.topk is None:
                logits = torch.from_numpy(np.array(self._read[f"{name}.logits"][start:start + n]))
            else:
                values = torch.from_numpy(np.array(self._read[f"{name}.values"][start:start + n]))
                index = torch.from_numpy(np.array(self._read[f"{name}.index"][start:start + n])).long()
                logits = expand_topk(values, index, shape[-1])
            logits = logits.reshape(shape).to(head.logits.device)
            heads[name] = replace(head, logits=logits)
        return Outputs(heads=heads, ids=student.ids)

    def add(self, teacher: Outputs) -> Outputs:
        """Remember this step's teacher logits (written when the epoch ends).

        Returns the teacher Outputs exactly as a later run will read them back (float32; for
        top-k, the expansion), so the run that writes the cache trains on the same teacher as
        every run that reads it.
        """
        offsets, shapes, heads = {}, {}, {}
        for name, head in teacher.heads.items():
            flat = head.logits.detach().float().reshape(-1, head.logits.shape[-1]).cpu()
            if self.topk is None:
                parts = {f"{name}.logits": flat.numpy()}
                seen = flat
            else:
                values, index = torch.log_softmax(flat, -1).topk(min(self.topk, flat.shape[-1]), -1)
                parts = {f"{name}.values": values.numpy(), f"{name}.index": index.int().numpy()}
                seen = expand_topk(values, index, flat.shape[-1])
            heads[name] = replace(head, logits=seen.reshape(head.logits.shape).to(head.logits.device))
            key = next(iter(parts))
            offsets[name] = sum(len(a) for a in self._pending.get(key, []))
            shapes[name] = list(head.logits.shape)
            for k, v in parts.items():
                self._pending.setdefault(k, []).append(v)
        self._offsets.append(offsets)
        self._shapes.append(shapes)
        return Outputs(heads=heads, ids=teacher.ids)

    def finish_epoch(self) -> None:
        """Publish the epoch atomically (a concurrent writer of the same epoch simply loses)."""
        if self._read is not None or not self._pending:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".epoch{self._epoch}.", dir=self.root))
        try:
            for key, arrays in self._pending.items():
                np.save(tmp / f"{key}.npy", np.concatenate(arrays))
            (tmp / "meta.json").write_text(json.dumps(
                {"arrays": sorted(self._pending), "offsets": self._offsets, "shapes": self._shapes,
                 "topk": self.topk}))
            os.rename(tmp, self.root / f"epoch{self._epoch}")
        except OSError:  # another run published this epoch first
            pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self._pending = {}

    def nbytes(self) -> int:
        return sum(f.stat().st_size for f in self.root.rglob("*.npy"))


def expand_topk(values: Tensor, index: Tensor, vocab: int) -> Tensor:
    """Logits whose softmax is the top-k log-probs `values` at `index`, the rest uniform.

    values, index: (N, k); returns (N, vocab) log-probabilities (valid logits).
    """
    k = values.shape[-1]
    if k >= vocab:
        return torch.full((values.shape[0], vocab), float("-inf"), dtype=values.dtype).scatter(-1, index, values)
    remainder = (1 - values.exp().sum(-1, keepdim=True)).clamp_min(1e-12)
    fill = (remainder / (vocab - k)).log()
    return fill.expand(values.shape[0], vocab).clone().scatter(-1, index, values)
