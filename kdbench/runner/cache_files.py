"""Memory-mapped `.npy` files for the teacher-output cache: filled batch by batch, checked on reading.

An `ArrayWriter` holds one growing 2-D array (rows × one head's row of logits, values or indices)
in a file under a writer's temporary folder:

- room for the expected rows is reserved up front (`os.posix_fallocate`, so a full disk is an
  OSError when the file is sized, not a SIGBUS in the middle of a write through the mapping), and
  the file grows by half again when a batch does not fit;
- each batch's rows are copied through a shared mapping (`mmap.mmap`, MAP_SHARED) at the next
  offset, and every `WINDOW` bytes the pages already written are released from the process
  (`madvise(MADV_DONTNEED)`: for a shared file mapping their contents stay in the page cache and
  reach the file; only the process's mapping of them goes), so a writer's resident set holds at
  most one window of cache pages, never the epoch;
- the data's sha256 is taken as it is written;
- `finish` cuts the file to the rows written and writes its `.npy` header (format 1.0 of
  numpy.lib.format: the magic string, the version, the header's length, then the dict of `descr`,
  `fortran_order` and `shape`, padded here with spaces to `HEADER_BYTES` so the data starts
  64-byte aligned). Until then the file starts with zeros, which `np.load` refuses.

`open_array` is the reading side: it memory-maps a published file read-only and checks it is
exactly what its epoch's `meta.json` describes (dtype, shape, size on disk, the data's sha256),
raising `DamagedCache` with the reason otherwise.
"""

from __future__ import annotations

import errno
import hashlib
import math
import mmap
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

#: The header of every array file: data starts at this offset (a multiple of 64, as numpy aligns).
HEADER_BYTES = 128
#: A writer releases the pages it has written from its mapping every this many bytes.
WINDOW = 8 << 20
#: Read size when hashing a file's data.
_BLOCK = 1 << 20
#: errno values of a filesystem that cannot reserve space; the file is then only extended.
_NO_FALLOCATE = {errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}


class DamagedCache(Exception):
    """A published cache entry that is not what its meta.json says; the message says why."""


def npy_header(dtype: np.dtype[Any], shape: tuple[int, ...]) -> bytes:
    """A `.npy` format-1.0 header for a C-ordered array, exactly `HEADER_BYTES` long."""
    text = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
    prefix = len(np.lib.format.magic(1, 0)) + 2  # magic and version, then a little-endian uint16 length
    length = HEADER_BYTES - prefix
    if len(text) + 1 > length:
        raise ValueError(f"array shape {shape} does not fit a {HEADER_BYTES}-byte .npy header")
    return np.lib.format.magic(1, 0) + struct.pack("<H", length) + (text.ljust(length - 1) + "\n").encode("latin1")


def _reserve(fd: int, size: int) -> None:
    """Make the file at least `size` bytes, with its blocks allocated where the filesystem can."""
    current = os.fstat(fd).st_size
    if size <= current:
        return
    if hasattr(os, "posix_fallocate"):  # not on macOS
        try:
            os.posix_fallocate(fd, current, size - current)
            return
        except OSError as e:
            if e.errno not in _NO_FALLOCATE:
                raise
    os.ftruncate(fd, size)


class ArrayWriter:
    """One cache array (rows of `row_shape`, `dtype`) written through a memory map, row block by block.

    Args:
        path: the file to create (it must not exist).
        dtype: numpy dtype of the rows (float32 logits or values, int32 indices).
        row_shape: the shape of one row (the head's last dim, or k).
        rows: how many rows to reserve room for (the epoch's size estimate); it grows beyond.
    """

    def __init__(self, path: Path, dtype: np.dtype[Any], row_shape: tuple[int, ...], rows: int) -> None:
        self.path, self.dtype, self.row_shape = Path(path), np.dtype(dtype), tuple(row_shape)
        self.row_bytes = self.dtype.itemsize * math.prod(self.row_shape)
        self.rows = 0
        self._digest = hashlib.sha256()
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        self._map: mmap.mmap | None = None
        self._capacity = 0
        self._released = 0  # bytes from the file's start whose pages are out of the mapping
        try:
            self._remap(max(int(rows), 1))
        except BaseException:
            self.abort()
            raise

    def _remap(self, rows: int) -> None:
        assert self._fd is not None
        if self._map is not None:
            self._map.close()
            self._map = None
        size = HEADER_BYTES + rows * self.row_bytes
        _reserve(self._fd, size)
        self._map = mmap.mmap(self._fd, size)  # MAP_SHARED, read and write
        self._capacity = rows
        self._released = (HEADER_BYTES + self.rows * self.row_bytes) // mmap.PAGESIZE * mmap.PAGESIZE

    def write(self, rows: np.ndarray) -> int:
        """Append `rows` (n, *row_shape) of this writer's dtype; returns the index of its first row."""
        if rows.dtype != self.dtype or tuple(rows.shape[1:]) != self.row_shape:
            raise ValueError(f"{self.path.name}: rows of {rows.dtype} {tuple(rows.shape[1:])}, expected "
                             f"{self.dtype} {self.row_shape}")
        first, n = self.rows, int(rows.shape[0])
        if first + n > self._capacity:
            self._remap(max(first + n, self._capacity + self._capacity // 2))
        assert self._map is not None
        data = np.ascontiguousarray(rows).data.cast("B")
        start = HEADER_BYTES + first * self.row_bytes
        self._map[start:start + len(data)] = data
        self._digest.update(data)
        self.rows += n
        self._release(start + len(data))
        return first

    def _release(self, written_to: int) -> None:
        """Drop from the mapping the written pages of every full window behind `written_to`."""
        end = written_to // mmap.PAGESIZE * mmap.PAGESIZE
        if end - self._released >= WINDOW and self._map is not None and hasattr(mmap, "MADV_DONTNEED"):
            self._map.madvise(mmap.MADV_DONTNEED, self._released, end - self._released)
            self._released = end

    def finish(self) -> dict[str, Any]:
        """Cut the file to the rows written, write its .npy header, close it; returns its meta entry."""
        assert self._fd is not None and self._map is not None
        self._map.close()
        self._map = None
        shape = (self.rows, *self.row_shape)
        os.ftruncate(self._fd, HEADER_BYTES + self.rows * self.row_bytes)
        os.pwrite(self._fd, npy_header(self.dtype, shape), 0)
        os.close(self._fd)
        self._fd = None
        return {"dtype": self.dtype.str, "shape": list(shape), "sha256": self._digest.hexdigest()}

    def abort(self) -> None:
        """Close and remove the file (a write that will not be published)."""
        if self._map is not None:
            self._map.close()
            self._map = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.path.unlink(missing_ok=True)


def open_array(path: Path, entry: dict[str, Any]) -> np.ndarray:
    """The published array at `path`, memory-mapped read-only, once it matches its meta `entry`.

    Raises:
        DamagedCache: the file is missing, not a .npy file, of another dtype, shape or size, or its
            data's sha256 differs from the one recorded when it was written.
    """
    try:
        array = np.load(path, mmap_mode="r")
        size = path.stat().st_size
    except (OSError, ValueError, EOFError) as e:
        raise DamagedCache(f"{path.name}: {e}") from None
    if not isinstance(array, np.memmap):
        raise DamagedCache(f"{path.name}: not a single array")
    try:
        dtype, shape, sha = str(entry["dtype"]), [int(n) for n in entry["shape"]], str(entry["sha256"])
    except (KeyError, TypeError, ValueError):
        raise DamagedCache(f"meta.json describes {path.name} incompletely") from None
    if array.dtype.str != dtype or list(array.shape) != shape:
        raise DamagedCache(f"{path.name}: {array.dtype.str} {list(array.shape)}, meta.json says {dtype} {shape}")
    if size != array.offset + array.nbytes:
        raise DamagedCache(f"{path.name}: {size} bytes, expected {array.offset + array.nbytes}")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(array.offset)
        while block := f.read(_BLOCK):
            digest.update(block)
    if digest.hexdigest() != sha:
        raise DamagedCache(f"{path.name}: its data's sha256 is not the one written")
    return array
