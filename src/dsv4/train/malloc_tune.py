"""glibc allocator settings for a training process: keep big tensor buffers in the heap.

A CPU training step allocates and frees the same large activation and gradient buffers
every step. By default glibc serves blocks above its mmap threshold (at most 32 MiB, and
the flagship's logits and their gradients are 64-128 MiB) with a fresh mmap, unmapped
again on free, and gives freed heap tops back to the kernel (trim), so every step pays
zero-fill page faults for memory it had a moment ago (~360k faults per flagship step).
Serving every block from the heap (M_MMAP_MAX = 0) and trimming only above 2 GiB of free
top makes the process keep those pages: the next step reuses them without faults (~25-30k
per step left; ~25% less CPU time per flagship step here, hc_mult 1 and 4 alike:
benchmarks/results/mhc_overhead_s4b.json). The price is that the process keeps its peak
heap resident, which a training loop reaches every step anyway.

Called once at the start of the training loop (train/pretrain.py) and by
benchmarks/mhc_overhead.py for both models alike. Opt out with DSV4_MALLOC_TUNE=0.
Linux/glibc only: elsewhere (macOS, musl) it does nothing and returns False.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

# mallopt parameter numbers from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: keep up to 2 GiB of freed heap top

_applied: bool | None = None


def tune_allocator() -> bool:
    """Apply the settings once per process; True when glibc accepted both."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("DSV4_MALLOC_TUNE", "1") == "0":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # no mmap'd blocks at all: glibc caps the mmap threshold at 32 MiB, below the biggest
    # step buffers; setting these also turns off glibc's dynamic threshold adjustment
    ok = mallopt(_M_MMAP_MAX, 0) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
    _applied = ok
    return ok
