"""Teacher outputs computed once and read back: a cache of the frozen teacher's head logits.

Every adapter draws an epoch's batches from (seed, epoch) alone, so for a given teacher, card,
seed, epoch and step the teacher sees the very same inputs in every run — whatever the method.
The first run to train an epoch writes that epoch's teacher logits; every later run of the same
(teacher, card, seed) — the other methods of a sweep — reads them instead of running the teacher.
Full-precision entries are the exact float32 logits, so a cached run's result is bit-identical to
an online one.

Writing never holds the epoch in memory: each step's rows go straight into one memory-mapped
`.npy` file per head and part (kdbench.runner.cache_files), sized before the first write from the
epoch's estimate (kdbench.runner.cache_budget) and grown if a batch does not fit, in a temporary
folder that is renamed to `epoch<N>` when the epoch ends (after `meta.json`, written last). A
crash leaves only the temporary folder, which no reader opens and the next writer removes once it
is `STALE_SECONDS` old. A reader checks every array against `meta.json` (dtype, shape, size, the
sha256 of its data) before using the epoch; a damaged epoch is said in one line, recomputed and
replaced.

With a top-k cache (the card's `train.teacher_cache_topk: k`, or chosen automatically when the
full cache is over the budget) only each position's k largest log-probabilities and their
indices are kept; reading back gives logits whose softmax puts exactly those probabilities on the
k tokens and spreads the remaining mass uniformly over the other V − k (one remainder bucket).
A method receives these as the teacher's logits (log-probabilities, valid logits up to a shift):
at a temperature T its softmax(z/T) keeps the ratios p_i^(1/T) of the k kept tokens exactly and
gives each other token (r/(V−k))^(1/T), r the remainder. Every method the cache serves reads the
teacher only through such softmaxes (kd, dkd, bdkd, nkd, taid); a binary head's independent
sigmoids have no top-k form, so such a head is never cached as top-k (kdbench.runner.cache_budget).
That changes the result; the record says which mode ran.

The cache serves methods that read only the teacher's final heads; with a teacher's features,
per-layer outputs or attentions (or an adapter that has not declared its teacher inputs
method-independent, `teacher_inputs_fixed`) the runner says why, in plain words, and runs the
teacher on every batch.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from kdbench.outputs import OUTPUT_NEEDS, Outputs
from kdbench.runner.cache_files import ArrayWriter, DamagedCache, open_array

#: Layout of an epoch folder: 2 = meta.json lists each array's dtype, shape and data sha256.
FORMAT = 2
#: A writer's temporary folder untouched this long belongs to a writer that died.
STALE_SECONDS = 3600.0

#: needs that mean a method reads more of the teacher than its final heads: the parts of its Outputs
#: beyond them (OUTPUT_NEEDS but `ids`, which come with the batch) and the adapter's teacher pass
_BEYOND_HEADS = frozenset(OUTPUT_NEEDS).difference({"ids"}) | {"teacher_pass"}


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
    """One (teacher, card, seed, world rank) folder with one subfolder per finished epoch.

    Args:
        root: the folder (under `$KDBENCH_CACHE/teacher-outputs/<task>/`).
        topk: None stores full float32 logits; k stores each position's top-k log-probabilities.
        rows: epoch → each head's expected positions (kdbench.runner.cache_budget.epoch_rows),
            which size the files before the epoch's first write; without it the files start at
            the first batch's rows and grow.
    """

    root: Path
    topk: int | None = None
    rows: Callable[[int], Mapping[str, int]] | None = None

    def __post_init__(self) -> None:
        self._epoch: int | None = None
        self._read: dict[str, np.ndarray] | None = None
        self._offsets: list[dict[str, int]] = []
        self._shapes: list[dict[str, list[int]]] = []
        self._writing: Path | None = None  # this epoch's temporary folder
        self._writers: dict[str, ArrayWriter] = {}
        self._expected: Mapping[str, int] = {}
        self._failed = False

    def start_epoch(self, epoch: int) -> None:
        """Open the epoch's published entry if it is there and intact; otherwise write it."""
        self.abort()
        self._epoch, self._offsets, self._shapes, self._read = epoch, [], [], None
        folder = self.root / f"epoch{epoch}"
        if (folder / "meta.json").exists():
            try:
                self._read, self._offsets, self._shapes = _open_epoch(folder, self.topk)
            except DamagedCache as e:
                print(f"teacher cache: {folder} is damaged ({e}); the teacher runs for epoch {epoch} and the "
                      "epoch is written again", file=sys.stderr)
        if self._read is None:
            self._expected = self.rows(epoch) if self.rows is not None else {}

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
        """Write this step's teacher logits into the epoch's memory-mapped files.

        Returns the teacher Outputs exactly as a later run will read them back (float32; for
        top-k, the expansion), so the run that writes the cache trains on the same teacher as
        every run that reads it — also when the write fails (a full disk), which only leaves the
        epoch unpublished.
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
            offsets[name] = self._write(name, parts)
            shapes[name] = list(head.logits.shape)
        self._offsets.append(offsets)
        self._shapes.append(shapes)
        return Outputs(heads=heads, ids=teacher.ids)

    def _write(self, head: str, parts: dict[str, np.ndarray]) -> int:
        """Append one head's arrays; returns their first row (-1 once this epoch's write failed)."""
        if self._failed:
            return -1
        try:
            if self._writing is None:
                self._writing = _new_folder(self.root, f".epoch{self._epoch}.")
            os.utime(self._writing)  # a live writer's folder is never stale (_clean_stale)
            first = []
            for key, array in parts.items():
                if key not in self._writers:
                    rows = max(int(self._expected.get(head, 0)), len(array))
                    self._writers[key] = ArrayWriter(self._writing / f"{key}.npy", array.dtype, array.shape[1:], rows)
                first.append(self._writers[key].write(array))
        except OSError as e:
            print(f"teacher cache: cannot write epoch {self._epoch} under {self.root} ({e.strerror or e}); "
                  "this epoch is not cached, the run goes on unchanged", file=sys.stderr)
            self.abort()
            self._failed = True
            return -1
        return first[0]

    def finish_epoch(self) -> None:
        """Publish the epoch atomically: its folder appears whole under its final name, or not at all."""
        if self._read is not None or self._writing is None:
            self.abort()
            return
        tmp, self._writing = self._writing, None
        try:
            arrays = {key: writer.finish() for key, writer in self._writers.items()}
            self._writers = {}
            (tmp / "meta.json").write_text(json.dumps(
                {"format": FORMAT, "arrays": arrays, "offsets": self._offsets, "shapes": self._shapes,
                 "topk": self.topk}))
            _publish(tmp, self.root / f"epoch{self._epoch}", self.topk)
        except OSError as e:
            print(f"teacher cache: cannot publish epoch {self._epoch} under {self.root} ({e.strerror or e})",
                  file=sys.stderr)
        finally:
            for writer in self._writers.values():
                writer.abort()
            self._writers = {}
            shutil.rmtree(tmp, ignore_errors=True)

    def abort(self) -> None:
        """Drop an unfinished write (a crash in the epoch's loop; a new epoch starting)."""
        for writer in self._writers.values():
            writer.abort()
        self._writers, self._failed, self._expected = {}, False, {}
        if self._writing is not None:
            shutil.rmtree(self._writing, ignore_errors=True)
            self._writing = None

    def nbytes(self) -> int:
        return sum(f.stat().st_size for f in self.root.glob("epoch*/*.npy"))


def _open_epoch(folder: Path, topk: int | None) -> tuple[dict[str, np.ndarray], list[Any], list[Any]]:
    """A published epoch's arrays (checked against meta.json), offsets and shapes."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        arrays, offsets, shapes = dict(meta["arrays"]), list(meta["offsets"]), list(meta["shapes"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DamagedCache(f"meta.json unreadable: {e}") from None
    if meta.get("format") != FORMAT or meta.get("topk") != topk:
        raise DamagedCache(f"meta.json of format {meta.get('format')} top-k {meta.get('topk')}, expected "
                           f"format {FORMAT} top-k {topk}")
    return {key: open_array(folder / f"{key}.npy", entry) for key, entry in arrays.items()}, offsets, shapes


def _new_folder(root: Path, prefix: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    _clean_stale(root)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=root))


def _clean_stale(root: Path) -> None:
    """Remove temporary folders of writers that died (untouched for `STALE_SECONDS`)."""
    now = time.time()
    for folder in root.glob(".epoch*"):
        try:
            if now - folder.stat().st_mtime > STALE_SECONDS:
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            pass


def _publish(tmp: Path, final: Path, topk: int | None) -> None:
    """Rename `tmp` to `final`; an intact `final` published by another run first wins, a damaged one
    is replaced."""
    try:
        os.rename(tmp, final)
        return
    except OSError:
        if not final.exists():
            raise
    try:
        _open_epoch(final, topk)
        return  # another run published this epoch first
    except DamagedCache:
        pass
    aside = Path(tempfile.mkdtemp(prefix=f".{final.name}.damaged.", dir=final.parent))
    os.rename(final, aside / final.name)
    os.rename(tmp, final)
    shutil.rmtree(aside, ignore_errors=True)


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
