"""Parameter counts of a configuration: total and activated, per component.

The model is built on the meta device (no memory, no init cost), so the published V4
sizes can be checked on a laptop. Counting conventions (stated in the output too):

- `total`: every parameter of the main model, embedding and output head included, the
  MTP block excluded -- the convention of DeepSeek's "284B" / "1.6T" (and of
  transformers' DeepseekV4, which does not instantiate MTP).
- `active`: parameters touched per token, EXCLUDING the embedding and the output head and
  the MTP block -- the convention under which DeepSeek's "13B" / "49B" match (transformers'
  reference gives 12.7B / 47.9B this way; 13.8B / 49.8B with embedding + head, reported
  as `active_with_embeddings`). Per token, routed experts count n_activated / n_routed of
  their parameters; for Engram tables only the rows read per token count (one row per
  hash head per N-gram order per Engram layer); everything else counts fully.
- `*_with_mtp`: the same plus the MTP block (its routed experts scaled the same way).
"""

from __future__ import annotations

import contextlib
import re
from collections import defaultdict

import torch

from dsv4.config import ModelConfig

COMPONENTS = (
    "embedding", "head", "attention", "compressor_indexer", "mhc", "moe_routed", "moe_shared",
    "moe_gate", "dense_ffn", "engram", "norms", "mtp",
)

CONVENTIONS = {
    "total": "all parameters incl. embedding and head, excl. the MTP block",
    "active": "per-token activated parameters excl. embedding, head and MTP block "
              "(routed experts scaled by n_activated/n_routed; Engram tables: rows read per token)",
    "active_with_embeddings": "active + embedding + head (MTP excluded)",
    "total_with_mtp": "total + the MTP block",
    "active_with_mtp": "active_with_embeddings + the MTP block's activated parameters",
}

_LAYER = re.compile(r"^(layers\.\d+|mtp)\.")


def component_of(name: str, cfg: ModelConfig) -> str:
    """Which component a parameter (by its state_dict name) belongs to."""
    if name.startswith("mtp."):
        return "mtp"
    if name.startswith("embed."):
        return "embedding"
    if name.startswith("head."):
        return "head"
    if "_residual." in name or name.startswith("hc_head."):
        return "mhc"
    if "engram" in name:
        return "engram"
    if name.endswith("_norm.weight") and name.count(".") == 3 or name == "norm.weight":
        return "norms"  # attn_norm / ffn_norm / final norm
    if ".attn." in name:
        return "compressor_indexer" if ("compressor" in name or "indexer" in name) else "attention"
    if ".ffn." in name:
        if not cfg.n_routed_experts:
            return "dense_ffn"
        if "shared" in name:
            return "moe_shared"
        if "expert" in name:
            return "moe_routed"
        return "moe_gate"
    return "norms"


def _active_fraction(name: str, p: torch.Tensor, cfg: ModelConfig, tables_per_layer: dict[str, int]) -> float:
    inner = name[4:] if name.startswith("mtp.") else name
    if cfg.n_routed_experts and ".ffn." in inner and "expert" in inner and "shared" not in inner:
        return cfg.n_activated_experts / cfg.n_routed_experts
    if "engram" in inner and "table" in inner and p.dim() >= 2:
        layer = _LAYER.match(name)
        n_tables = tables_per_layer.get(layer.group(1) if layer else "", 1)
        rows_read = len(cfg.engram_ngram_orders) * cfg.engram_n_heads / n_tables
        return min(1.0, rows_read / p.shape[0])
    return 1.0


def count_parameters(model: torch.nn.Module, cfg: ModelConfig) -> dict:
    """Totals and per-component counts (see the module docstring for conventions)."""
    params = dict(model.named_parameters())  # de-duplicates tied weights
    tables_per_layer: dict[str, int] = defaultdict(int)
    for name, p in params.items():
        layer = _LAYER.match(name)
        if "engram" in name and "table" in name and p.dim() >= 2:
            tables_per_layer[layer.group(1) if layer else ""] += 1
    total = defaultdict(int)
    active = defaultdict(float)
    for name, p in params.items():
        comp = component_of(name, cfg)
        total[comp] += p.numel()
        active[comp] += p.numel() * _active_fraction(name, p, cfg, tables_per_layer)
    main = [c for c in COMPONENTS if c != "mtp"]
    body = [c for c in main if c not in ("embedding", "head")]
    out = {
        "total": sum(total[c] for c in main),
        "active": round(sum(active[c] for c in body)),
        "active_with_embeddings": round(sum(active[c] for c in main)),
        "total_with_mtp": sum(total.values()),
        "active_with_mtp": round(sum(active[c] for c in main) + active["mtp"]),
        "components": {c: {"total": total[c], "active": round(active[c])} for c in COMPONENTS},
        "conventions": CONVENTIONS,
    }
    return out


@contextlib.contextmanager
def _skip_init():
    """Make torch.nn.init a no-op: on the meta device there is nothing to initialise, and
    the per-tensor dispatch of ~35k expert weights would otherwise take a minute."""
    names = [n for n in dir(torch.nn.init) if n.endswith("_") and not n.startswith("_")]
    saved = {n: getattr(torch.nn.init, n) for n in names}
    try:
        for n in names:
            setattr(torch.nn.init, n, lambda tensor, *a, **k: tensor)
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.nn.init, n, f)


def summarize(cfg: ModelConfig) -> dict:
    """Build `cfg` on the meta device and count its parameters."""
    from dsv4.model.transformer import Transformer

    with torch.device("meta"), _skip_init():
        model = Transformer(cfg)
    return count_parameters(model, cfg)


def human(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def format_table(name: str, s: dict) -> str:
    lines = [f"{name}: total {human(s['total'])}, active {human(s['active'])} "
             f"({human(s['active_with_embeddings'])} with embedding+head); "
             f"with MTP: total {human(s['total_with_mtp'])}, active {human(s['active_with_mtp'])}",
             f"  {'component':<20}{'total':>12}{'active':>12}"]
    for comp, c in s["components"].items():
        if c["total"]:
            lines.append(f"  {comp:<20}{human(c['total']):>12}{human(c['active']):>12}")
    lines.append("conventions:")
    lines += [f"  {k}: {v}" for k, v in s["conventions"].items()]
    return "\n".join(lines)
