"""dsv4.train.malloc_tune: glibc keeps freed step buffers, so a repeated step stops page-faulting.

Each check runs in a fresh interpreter (allocator settings are per process and cannot be
undone): the same allocate-touch-free loop with the setting on and opted out.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")

# eight 8 MiB buffers and one 64 MiB one (above any mmap threshold glibc allows) per "step",
# touched, then all freed: by default glibc trims the freed heap top and unmaps the big one,
# and the next step faults every page in again
LOOP = """
import json, resource
from dsv4.train.malloc_tune import tune_allocator
applied = tune_allocator()
faults = []
for step in range(6):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    bufs = [bytearray(8 << 20) for _ in range(8)] + [bytearray(64 << 20)]
    del bufs
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
print(json.dumps({"applied": applied, "again": tune_allocator(), "faults": faults[2:]}))
"""


def run_loop(tune: str) -> dict:
    env = {**os.environ, "PYTHONPATH": SRC, "DSV4_MALLOC_TUNE": tune}
    out = subprocess.run([sys.executable, "-c", LOOP], env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_tuned_allocator_stops_per_step_faults():
    on, off = run_loop("1"), run_loop("0")
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        assert on["applied"] is False  # silently a no-op off glibc
        return
    assert on["applied"] is True and on["again"] is True  # idempotent: the second call reports the same
    assert off["applied"] is False and off["again"] is False
    pages = (8 * (8 << 20) + (64 << 20)) // 4096
    # opted out, every step faults most of its 128 MiB in again; tuned, the heap keeps the pages
    assert min(off["faults"]) > pages // 2
    assert max(on["faults"]) < pages // 20
