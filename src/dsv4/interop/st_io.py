"""Streaming safetensors I/O: read a checkpoint directory lazily, write one tensor at a time.

Foreign checkpoints are big (V4-Flash: 284B parameters over dozens of shards), so the
converters never hold a whole model: `TensorSource` maps every tensor name to its shard
and reads tensors on demand (one shard open at a time when walked with `by_shard`), and
`write_safetensors` writes a file from a *plan* -- (name, shape, dtype, producer) entries
whose sizes are known up front from the source headers -- calling each producer only when
its bytes are due. Memory then stays at one tensor (or one layer's experts), whatever the
model size. `write_sharded` splits a plan into `model-0000i-of-0000n.safetensors` files
plus the `model.safetensors.index.json` that transformers' `from_pretrained` reads.

The file format (safetensors spec): 8-byte little-endian header length, a JSON header
{name: {dtype, shape, data_offsets}} padded with spaces to a multiple of 8, then the raw
little-endian tensor bytes in header order. Packed FP4 (`float4_e2m1fn_x2`) is recorded
with its logical shape (twice the last torch dimension), as safetensors itself does.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from dsv4.errors import UserError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"

_CODES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
    torch.float8_e8m0fnu: "F8_E8M0",
    torch.float4_e2m1fn_x2: "F4",
    torch.complex64: "C64",
}

DTYPES = {code: dt for dt, code in _CODES.items()}


@dataclass
class Planned:
    """One tensor of a file to write: its bytes come from `make()` when they are due."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    make: Callable[[], torch.Tensor]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


class TensorSource:
    """The tensors of a checkpoint directory, read lazily.

    Layouts: a single `model.safetensors`; a `*.safetensors.index.json` whose weight_map
    names the shards (transformers, DeepSeek's released repos); or any other set of
    `*.safetensors` files in the directory (DeepSeek's converted `model0-mp1.safetensors`).
    """

    def __init__(self, directory: str | Path):
        from safetensors import safe_open

        self._safe_open = safe_open
        self.dir = Path(directory)
        index = sorted(self.dir.glob("*.safetensors.index.json"))
        if index:
            try:
                weight_map = json.loads(index[0].read_text())["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise UserError(f"cannot read the shard index {index[0]}: {e}") from None
            files = sorted(set(weight_map.values()))
            missing = [f for f in files if not (self.dir / f).exists()]
            if missing:
                raise UserError(f"{index[0]} names shard {missing[0]}, which is not in {self.dir}")
        else:
            files = sorted(p.name for p in self.dir.glob("*.safetensors"))
            if not files:
                raise UserError(f"no safetensors weights in {self.dir}")
        self.shards: list[str] = files
        self.where: dict[str, str] = {}
        self._meta: dict[str, tuple[tuple[int, ...], str]] = {}
        for f in files:
            with self._open(f) as h:
                for k in h.keys():
                    sl = h.get_slice(k)
                    self.where[k] = f
                    self._meta[k] = (tuple(sl.get_shape()), sl.get_dtype())
        self._handle: tuple[str, object, object] | None = None  # (shard, context manager, handle)

    def _open(self, shard: str):
        path = self.dir / shard
        try:
            return self._safe_open(str(path), framework="pt")
        except Exception as e:  # safetensors raises its own error types for a corrupt header
            raise UserError(f"cannot read {path}: {e}") from None

    def keys(self) -> list[str]:
        return list(self.where)

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def shape(self, name: str) -> tuple[int, ...]:
        """Logical shape as recorded in the header (packed FP4: twice the torch last dim)."""
        return self._meta[name][0]

    def dtype(self, name: str) -> torch.dtype:
        return DTYPES[self._meta[name][1]]

    def get(self, name: str) -> torch.Tensor:
        """Read one tensor (keeps the shard it lives in open for the next read)."""
        shard = self.where.get(name)
        if shard is None:
            raise UserError(f"tensor {name} is missing from {self.dir}")
        if self._handle is None or self._handle[0] != shard:
            self.close()
            cm = self._open(shard)
            self._handle = (shard, cm, cm.__enter__())
        try:
            return self._handle[2].get_tensor(name)
        except Exception as e:
            raise UserError(f"cannot read tensor {name} from {self.dir / shard}: {e}") from None

    def by_shard(self) -> Iterator[tuple[str, list[str]]]:
        """(shard file, its tensor names) one shard at a time; `get` on those names reads that shard."""
        for shard in self.shards:
            yield shard, [k for k, f in self.where.items() if f == shard]
        self.close()

    def close(self) -> None:
        if self._handle is not None:
            self._handle[1].__exit__(None, None, None)
            self._handle = None


def _header_shape(p: Planned) -> list[int]:
    if p.dtype == torch.float4_e2m1fn_x2:  # safetensors records FP4 by element count
        return [*p.shape[:-1], p.shape[-1] * 2]
    return list(p.shape)


def write_safetensors(path: str | Path, plan: list[Planned], metadata: dict[str, str] | None = None) -> None:
    """Write `plan` to `path`, materialising one tensor at a time (checked against the plan)."""
    header: dict[str, dict] = {"__metadata__": {"format": "pt", **(metadata or {})}}
    offset = 0
    for p in plan:
        if p.dtype not in _CODES:
            raise ValueError(f"{p.name}: dtype {p.dtype} cannot be stored in safetensors")
        header[p.name] = {
            "dtype": _CODES[p.dtype],
            "shape": _header_shape(p),
            "data_offsets": [offset, offset + p.nbytes],
        }
        offset += p.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for p in plan:
            t = p.make()
            if tuple(t.shape) != tuple(p.shape) or t.dtype != p.dtype:
                raise RuntimeError(
                    f"{p.name}: produced {tuple(t.shape)} {t.dtype}, planned {p.shape} {p.dtype}"
                )
            _write_tensor(f, t)
    tmp.replace(path)


WRITE_CHUNK_BYTES = 64 << 20


def _write_tensor(f, t: torch.Tensor) -> None:
    """Write a tensor's bytes in chunks straight from its memory (numpy's buffer, no bytes
    copy): an mmap-backed Engram table streams through the page cache instead of being
    copied whole into RAM."""
    flat = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
    for a in range(0, flat.numel(), WRITE_CHUNK_BYTES):
        f.write(flat[a: a + WRITE_CHUNK_BYTES].numpy())


def write_sharded(out_dir: str | Path, plan: list[Planned], max_shard_bytes: int = 0) -> list[str]:
    """Write `plan` as `model.safetensors` (max_shard_bytes 0 or everything fits) or as
    numbered shards of at most max_shard_bytes each plus the index json. Returns file names."""
    out = Path(out_dir)
    groups: list[list[Planned]] = [[]]
    size = 0
    for p in plan:
        if max_shard_bytes and groups[-1] and size + p.nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(p)
        size += p.nbytes
    if len(groups) == 1:
        write_safetensors(out / SINGLE, groups[0])
        return [SINGLE]
    names = [f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))]
    weight_map = {}
    for name, group in zip(names, groups, strict=True):
        write_safetensors(out / name, group)
        weight_map.update({p.name: name for p in group})
    total = sum(p.nbytes for p in plan)
    (out / INDEX).write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
    return names
