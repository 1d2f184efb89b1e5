"""Throughput accounting: FLOPs per token, a measured bf16 matmul peak, MFU, metrics.jsonl.

MFU = achieved model FLOP/s / peak FLOP/s, where
  - model FLOPs per token = 6 * N_active (forward + backward of every matmul weight a
    token passes through; embedding and Engram lookups are not matmuls, routed experts
    count at n_activated / n_routed, the MTP block's pass through the shared head counts)
    + 12 * L * H * D_head * T for attention scores and values (the PaLM appendix B
    convention, not halved for causality);
  - peak = the rate of a short timed loop of large bf16 matmuls on this machine, with the
    threads the run uses (cached per machine/threads/torch version, since it takes ~1 s).
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch


def active_matmul_params(model: torch.nn.Module) -> int:
    cfg = model.config
    n = 0
    for name, p in model.named_parameters():
        if name.startswith("embed.") or ("engram" in name and "table" in name):
            continue
        scale = 1.0
        if ".experts." in name and cfg.n_routed_experts:
            scale = cfg.n_activated_experts / cfg.n_routed_experts
        n += int(p.numel() * scale)
    if cfg.tie_embeddings:  # the head shares the embedding matrix but is a real matmul
        n += cfg.vocab_size * cfg.dim
    # each MTP block runs the shared head once more per token (SPEC 1.5)
    n += getattr(cfg, "n_mtp_layers", 0) * cfg.vocab_size * cfg.dim
    return n


def flops_per_token(model: torch.nn.Module, seq_len: int) -> float:
    cfg = model.config
    attn = 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * seq_len
    return 6.0 * active_matmul_params(model) + attn


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_peak_flops(device: str = "cpu", seconds: float = 1.0, n: int = 2048) -> float:
    """bf16 matmul FLOP/s of this device with the current thread count (best of a few timings)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(2):
        a @ b  # warm up
    sync()
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        reps = 4
        for _ in range(reps):
            a @ b
        sync()
        best = max(best, reps * 2 * n**3 / (time.perf_counter() - t0))
    return best


def peak_flops(device: str = "cpu", cache: bool = True) -> float:
    """The measured bf16 peak, cached in ~/.cache/dsv4/peak_flops.json per machine and threads."""
    name = torch.cuda.get_device_name() if device.startswith("cuda") else _cpu_name()
    key = f"{device}|{name}|threads={torch.get_num_threads()}|torch={torch.__version__}"
    path = Path(os.environ.get("DSV4_CACHE", Path.home() / ".cache" / "dsv4")) / "peak_flops.json"
    table = {}
    if cache:
        try:
            table = json.loads(path.read_text())
            if key in table:
                return float(table[key])
        except (OSError, ValueError):
            table = {}
    value = measure_peak_flops(device)
    if cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            table[key] = value
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(table, indent=2))
            os.replace(tmp, path)
        except OSError:
            pass
    return value


class MetricsLog:
    """Appends one JSON object per line to DIR/metrics.jsonl (flushed, so a crash loses nothing)."""

    def __init__(self, path: str | Path, truncate_after_step: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if truncate_after_step is not None and self.path.exists():
            # A resumed run replays steps after its checkpoint: drop their old records.
            kept = []
            for line in self.path.read_text().splitlines():
                try:
                    if json.loads(line).get("step", 0) <= truncate_after_step:
                        kept.append(line)
                except ValueError:
                    continue
            self.path.write_text("".join(k + "\n" for k in kept))
        self._f = open(self.path, "a")

    def write(self, record: dict) -> None:
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def read_metrics(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
