"""One [rows, dim] tensor in a memory-mapped file: the SSD tier of the Engram memory (issue 8).

Format (little endian), designed so that the data is page-aligned and a bad file is caught
before a single row is used:

    bytes 0..4095   header: magic b"DSV4ENGT", u32 version, u32 dtype code, u64 rows, u64 dim,
                    u32 complete (0 while the file is being created), u32 crc32 of the fields
                    before it; the rest of the page is zero
    bytes 4096..    rows * dim elements, row-major

A table larger than RAM works because nothing here reads the data as a whole: the file is
mapped with MADV_RANDOM (no readahead, so a row read faults in just its own pages) and
exposed as a torch tensor over the mapping (`torch.frombuffer`, zero copy), which index
ops read and write row by row. New files are created sparse (ftruncate: zero rows cost no
disk and no page cache) and, for tables, initialised chunk by chunk.

`resident_pages()` asks the kernel (mincore) which data pages are in memory: the tests use
it to show that training touches only the pages of the rows it reads.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from dsv4.errors import UserError

MAGIC = b"DSV4ENGT"
VERSION = 1
HEADER_BYTES = 4096
_FIELDS = struct.Struct("<8sIIQQI")  # magic, version, dtype, rows, dim, complete
DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2, torch.int32: 3}
CODE_DTYPES = {v: k for k, v in DTYPE_CODES.items()}
PAGE = mmap.PAGESIZE


def _pack_header(dtype: torch.dtype, rows: int, dim: int, complete: bool) -> bytes:
    fields = _FIELDS.pack(MAGIC, VERSION, DTYPE_CODES[dtype], rows, dim, int(complete))
    return fields + struct.pack("<I", zlib.crc32(fields))


def read_header(path: str | Path) -> dict:
    """The header of a table file as a dict; UserError naming the problem if it is not valid."""
    path = Path(path)
    size = path.stat().st_size
    if size < _FIELDS.size + 4:
        raise UserError(f"Engram table file {path} is truncated: {size} bytes, not even a header")
    with open(path, "rb") as f:
        raw = f.read(_FIELDS.size + 4)
    magic, version, code, rows, dim, complete = _FIELDS.unpack(raw[: _FIELDS.size])
    if magic != MAGIC:
        raise UserError(f"{path} is not a dsv4 Engram table file (bad magic {magic!r})")
    (crc,) = struct.unpack("<I", raw[_FIELDS.size:])
    if crc != zlib.crc32(raw[: _FIELDS.size]):
        raise UserError(f"Engram table file {path} has a corrupt header (checksum mismatch)")
    if version != VERSION or code not in CODE_DTYPES:
        raise UserError(f"Engram table file {path} has unsupported version {version} / dtype code {code}")
    dtype = CODE_DTYPES[code]
    expected = HEADER_BYTES + rows * dim * dtype.itemsize
    if not complete:
        raise UserError(f"Engram table file {path} is incomplete (its creation was interrupted); delete it")
    if size != expected:
        what = "truncated" if size < expected else "longer than its header says"
        raise UserError(f"Engram table file {path} is {what}: {size} bytes, expected {expected} "
                        f"for {rows} x {dim} {str(dtype).removeprefix('torch.')}")
    return {"rows": rows, "dim": dim, "dtype": dtype, "size": size}


class TableFile:
    """A [rows, dim] tensor backed by a file. Opens an existing valid file (its contents are
    kept) or creates a new sparse one; `created` says which. `fresh=True` always recreates."""

    def __init__(self, path: str | Path, rows: int, dim: int, dtype: torch.dtype = torch.float32,
                 fresh: bool = False):
        self.path = Path(path)
        self.rows, self.dim, self.dtype = rows, dim, dtype
        self.created = fresh or not self.path.exists()
        if self.created:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "wb") as f:  # truncates an old file: zeros, sparse on disk
                f.write(_pack_header(dtype, rows, dim, complete=False))
                f.truncate(HEADER_BYTES + rows * dim * dtype.itemsize)
        else:
            head = read_header(self.path)
            if (head["rows"], head["dim"], head["dtype"]) != (rows, dim, dtype):
                raise UserError(
                    f"Engram table file {self.path} holds {head['rows']} x {head['dim']} "
                    f"{head['dtype']}, but this model expects {rows} x {dim} {dtype}; delete it or "
                    f"point engram_path elsewhere")
        try:
            self._file = open(self.path, "r+b")
        except OSError as e:
            raise UserError(f"cannot open Engram table file {self.path} for writing: {e}") from None
        self._map = mmap.mmap(self._file.fileno(), 0)
        self._map.madvise(mmap.MADV_RANDOM)  # a row read faults in its own pages only
        self.tensor = torch.frombuffer(self._map, dtype=dtype, count=rows * dim,
                                       offset=HEADER_BYTES).view(rows, dim)

    def mark_complete(self) -> None:
        """Flush the data, then set the header's complete flag (a crash before leaves it 0)."""
        self._map.flush()
        self._map[: _FIELDS.size + 4] = _pack_header(self.dtype, self.rows, self.dim, complete=True)
        self._map.flush(0, PAGE)

    def flush(self) -> None:
        self._map.flush()

    @property
    def data_pages(self) -> int:
        return -(-self.rows * self.dim * self.dtype.itemsize // PAGE)

    def resident_pages(self) -> np.ndarray:
        """Bool per data page: in memory now (mincore). Header page excluded."""
        total = HEADER_BYTES + self.rows * self.dim * self.dtype.itemsize
        n = -(-total // PAGE)
        vec = (ctypes.c_ubyte * n)()
        base = self.tensor.data_ptr() - HEADER_BYTES  # the mapping starts page-aligned
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.mincore(ctypes.c_void_p(base), ctypes.c_size_t(total), vec) != 0:
            raise OSError(ctypes.get_errno(), "mincore failed")
        return (np.frombuffer(vec, dtype=np.uint8) & 1).astype(bool)[HEADER_BYTES // PAGE:]

    def row_pages(self, rows: torch.Tensor) -> np.ndarray:
        """Data page indices that hold any byte of the given rows."""
        nbytes = self.dim * self.dtype.itemsize
        start = rows.long() * nbytes
        first, last = start // PAGE, (start + nbytes - 1) // PAGE
        span = -(-nbytes // PAGE) + 1  # a row covers at most this many pages
        pages = [first + k for k in range(span)]
        pages = torch.cat([p[p <= last] for p in pages])
        return np.unique(pages.numpy())

    def will_need(self, rows: torch.Tensor) -> None:
        """Ask the kernel to start reading the pages of `rows` now (MADV_WILLNEED): many reads
        in flight at once instead of one page fault at a time when the rows are touched."""
        pages = self.row_pages(rows)
        pages = pages[~self.resident_pages()[pages]]  # warm pages need no syscall (one mincore)
        if not len(pages):
            return
        breaks = np.flatnonzero(np.diff(pages) != 1) + 1  # runs of consecutive pages: one call each
        for run in np.split(pages, breaks):
            self._map.madvise(mmap.MADV_WILLNEED, HEADER_BYTES + int(run[0]) * PAGE, len(run) * PAGE)

    def drop_page_cache(self) -> None:
        """Write back and evict this file from memory (the 'cold' state of a table on disk)."""
        self._map.flush()
        self._map.madvise(mmap.MADV_DONTNEED)
        os.fsync(self._file.fileno())
        os.posix_fadvise(self._file.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
