"""glibc allocator settings for a training process: keep big tensor buffers in the heap.

A CPU training step allocates and frees the same large activation and gradient buffers
every step. By default glibc serves blocks above its mmap threshold with a fresh mmap
and gives freed heap tops back to the kernel (trim), so every step pays zero-fill page
faults for memory it had a moment ago (~325k faults per flagship step at hc_mult=1).
Raising the mmap threshold to glibc's maximum and the trim threshold far above a step's
footprint makes the heap keep those pages: the next step reuses them without faults.
The price is that the process keeps its peak heap resident, which a training loop
reaches every step anyway.

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
_M_MMAP_THRESHOLD = -3
# glibc refuses an mmap threshold above HEAP_MAX_SIZE / 2 (32 MiB on 64-bit builds)
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 1 << 30  # keep up to 1 GiB of freed heap top instead of returning it

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
    # set the mmap threshold first: setting either one also turns off glibc's dynamic
    # threshold, which would otherwise move them back as buffers are freed
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
    _applied = ok
    return ok
