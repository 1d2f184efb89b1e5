"""DeepSeek's released V4 layout: read (FP8/FP4 dequantised, shard by shard) and write.

The released checkpoints (deepseek-ai/DeepSeek-V4-*, and what `inference/convert.py`
produces) name tensors as DeepSeek's `inference/model.py` does (names.py) and store:
  - most linear weights in FP8 e4m3 with a companion `<name>.scale`: one power-of-two
    (ue8m0, stored as float8_e8m0fnu, or fp32) scale per 128x128 block, shape
    [ceil(out/128), ceil(in/128)]: w = q * scale[block];
  - routed-expert weights (`expert_dtype: fp4`) in FP4 e2m1, two values per byte (low
    nibble first) as float4_e2m1fn_x2 [out, in/2], with one ue8m0 scale per 32 inputs,
    shape [out, in/32];
  - embeddings, head, norms, gates, the compressors' wkv/wgate and the indexer's
    weights_proj in bf16; mHC parameters, `ape`, sinks and gate biases in fp32;
    `tid2eid` in int32. Hash-routed gates have no bias.
Every tensor with a `.scale` companion is dequantised on load whatever its name.

`load_foreign` builds our model on the meta device, allocates it once, then walks the
shards one at a time, dequantising and copying each tensor into place: peak memory is
the model plus one shard's tensors. The same walk serves transformers directories (any
dialect, names.foreign_to_ours), which is how `--from-hf` also accepts DeepSeek's own
FP8 release. `write_native` writes our model in this layout -- unquantised for
`--to-hf` (transformers loads DeepSeek's names directly), or FP8/FP4-quantised with the
quantisers below (used by the tests to build a checkpoint in the released format).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dsv4.config import ModelConfig
from dsv4.errors import UserError
from dsv4.interop import names as N
from dsv4.interop.st_io import Planned, TensorSource, write_sharded

FP8_BLOCK = 128
FP4_GROUP = 32
FP8_MAX, FP4_MAX = 448.0, 6.0
FP4_VALUES = torch.tensor(
    [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]
)

# DeepSeek's ModelArgs defaults (inference/model.py), for keys an inference config omits
DS_DEFAULTS = dict(
    max_seq_len=4096,
    vocab_size=129280,
    dim=4096,
    moe_inter_dim=4096,
    n_layers=7,
    n_hash_layers=0,
    n_mtp_layers=1,
    n_heads=64,
    n_routed_experts=8,
    n_shared_experts=1,
    n_activated_experts=2,
    score_func="sqrtsoftplus",
    route_scale=1.0,
    swiglu_limit=0.0,
    q_lora_rank=1024,
    head_dim=512,
    rope_head_dim=64,
    norm_eps=1e-6,
    o_groups=8,
    o_lora_rank=1024,
    window_size=128,
    compress_ratios=[0, 0, 4, 128, 4, 128, 4, 0],
    compress_rope_theta=40000.0,
    original_seq_len=0,
    rope_theta=10000.0,
    rope_factor=40.0,
    beta_fast=32,
    beta_slow=1,
    index_n_heads=64,
    index_head_dim=128,
    index_topk=512,
    hc_mult=4,
    hc_sinkhorn_iters=20,
    hc_eps=1e-6,
)
DS_RUNTIME_KEYS = {"max_batch_size", "dtype", "scale_fmt", "expert_dtype", "scale_dtype"}
# linear weights DeepSeek stores in FP8 (the others stay bf16 / fp32)
FP8_SUFFIXES = (
    "attn.wq_a.weight",
    "attn.wq_b.weight",
    "attn.wkv.weight",
    "attn.wo_a.weight",
    "attn.wo_b.weight",
    "attn.indexer.wq_b.weight",
    "shared_experts.w1.weight",
    "shared_experts.w2.weight",
    "shared_experts.w3.weight",
    "e_proj.weight",
    "h_proj.weight",
)


# ---- quantisation ---------------------------------------------------------------------------


def _pow2_scale(amax: torch.Tensor, qmax: float) -> torch.Tensor:
    """ue8m0 scale: the smallest power of two with amax / scale <= qmax (1 for all-zero blocks)."""
    s = torch.exp2(torch.ceil(torch.log2(amax.float().clamp_min(1e-30) / qmax)))
    return torch.where(amax > 0, s, torch.ones_like(s))


def quantize_fp8(w: torch.Tensor, block: int = FP8_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """[out, in] -> (float8_e4m3fn [out, in], float8_e8m0fnu [ceil(out/b), ceil(in/b)])."""
    out_f, in_f = w.shape
    so, si = -(-out_f // block), -(-in_f // block)
    padded = torch.zeros(so * block, si * block)
    padded[:out_f, :in_f] = w.float()
    blocks = padded.view(so, block, si, block)
    scale = _pow2_scale(blocks.abs().amax(dim=(1, 3)), FP8_MAX)
    q = (blocks / scale.view(so, 1, si, 1)).view(so * block, si * block)[:out_f, :in_f]
    return q.to(torch.float8_e4m3fn), scale.to(torch.float8_e8m0fnu)


def _block(n: int, n_scales: int) -> int:
    """The block size along a dimension of n values with n_scales scales: 128 as released
    (V4.1 uses 32x32 blocks, which the same rule recovers when 128 does not fit)."""
    return FP8_BLOCK if -(-n // FP8_BLOCK) == n_scales else -(-n // n_scales)


def dequantize_fp8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    out_f, in_f = q.shape
    so, si = scale.shape
    bo, bi = _block(out_f, so), _block(in_f, si)
    s = scale.float().repeat_interleave(bo, 0)[:out_f].repeat_interleave(bi, 1)[:, :in_f]
    return q.float() * s


def quantize_fp4(w: torch.Tensor, group: int = FP4_GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """[out, in] -> (float4_e2m1fn_x2 [out, in/2], float8_e8m0fnu [out, in/group]); round to nearest."""
    out_f, in_f = w.shape
    if in_f % group:
        raise ValueError(f"FP4 needs in_features divisible by {group}, got {in_f}")
    g = w.float().view(out_f, in_f // group, group)
    scale = _pow2_scale(g.abs().amax(dim=-1), FP4_MAX)
    x = (g / scale.unsqueeze(-1)).view(out_f, in_f)
    codes = (x.abs().unsqueeze(-1) - FP4_VALUES[:8].to(x)).abs().argmin(-1) + 8 * (x < 0)
    packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).to(torch.uint8)
    return packed.view(torch.float4_e2m1fn_x2), scale.to(torch.float8_e8m0fnu)


def dequantize_fp4(packed: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    b = packed.view(torch.uint8).long()
    codes = torch.stack([b & 0xF, b >> 4], dim=-1).flatten(-2)  # low nibble = even input index
    vals = FP4_VALUES[codes]
    group = vals.shape[1] // scale.shape[1]
    return vals * scale.float().repeat_interleave(group, dim=1)


def dequantize(w: torch.Tensor, scale: torch.Tensor | None) -> tuple[torch.Tensor, str]:
    """(dequantised fp32 tensor or w itself, "fp8" | "fp4" | "none")."""
    if scale is None:
        return w, "none"
    if w.dtype == torch.float8_e4m3fn:
        return dequantize_fp8(w, scale), "fp8"
    if w.dtype in (torch.float4_e2m1fn_x2, torch.int8, torch.uint8):  # packed e2m1 (I8/U8 in older files)
        return dequantize_fp4(w, scale), "fp4"
    raise UserError(f"do not know how to dequantise a {w.dtype} weight with a scale")


# ---- config ---------------------------------------------------------------------------------


def config_from_deepseek(d: dict, has_mtp: bool | None = None) -> ModelConfig:
    """Our config for DeepSeek's inference config.json (ModelArgs keys) or, when it is a
    transformers-style config (DeepSeek's repos ship one), via hf.config_from_hf with the
    MTP block kept when the weights carry it."""
    from dsv4.interop.hf import config_from_hf

    if "hidden_size" in d or d.get("model_type") == "deepseek_v4":
        cfg = config_from_hf(d)
        n_mtp = int(d.get("num_nextn_predict_layers", 0) or 0)
        if has_mtp and n_mtp:
            cfg = ModelConfig.from_dict({**cfg.to_dict(), "n_mtp_layers": min(n_mtp, 1)})
        return cfg
    g = {**DS_DEFAULTS, **{k: v for k, v in d.items() if k not in DS_RUNTIME_KEYS}}
    if g["n_shared_experts"] != 1:
        raise UserError("DeepSeek's V4 has exactly one shared expert (n_shared_experts must be 1)")
    ours = {k: g[k] for k in DS_DEFAULTS if k in ModelConfig.__dataclass_fields__}
    ours.update(
        compress_ratios=list(g["compress_ratios"])[: g["n_layers"]],
        shared_kv=True,
        n_kv_heads=1,
        attn_sink=True,
        n_mtp_layers=min(int(g["n_mtp_layers"]), 1) if has_mtp is not False else 0,
    )
    unknown = sorted(set(g) - set(ours) - set(DS_DEFAULTS) - DS_RUNTIME_KEYS)
    if unknown:
        raise UserError(f"unknown key(s) in the DeepSeek config: {', '.join(unknown)}")
    return ModelConfig.from_dict({**ModelConfig().to_dict(), **ours})


# ---- reading any external layout into our names ------------------------------------------------


@dataclass
class LoadReport:
    """What a foreign load read: printed by `dsv4 model summary --ckpt`."""

    layout: str
    shards: int = 0
    tensors: int = 0
    fp8: int = 0
    fp4: int = 0
    zero_filled: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


@dataclass
class _Ref:
    name: str  # source tensor
    scale: str | None = None
    expert: tuple[int, slice] | None = None  # (expert, rows) inside a stacked transformers tensor


def index_source(src: TensorSource, cfg: ModelConfig) -> tuple[dict[str, _Ref], list[str]]:
    """Our name -> where its bytes are, for every source tensor; and the source names not used."""
    refs, skipped = {}, []
    inter = cfg.moe_inter_dim or cfg.ffn_dim
    for name in src.keys():
        if name.endswith(".scale") and name[: -len(".scale")] + ".weight" in src:
            continue
        stacked = N.stacked_experts(name)
        if stacked is not None:
            i, kind = stacked
            for e in range(cfg.n_routed_experts):
                if kind == "down_proj":
                    refs[f"layers.{i}.ffn.experts.{e}.w2.weight"] = _Ref(name, None, (e, slice(None)))
                else:
                    refs[f"layers.{i}.ffn.experts.{e}.w1.weight"] = _Ref(name, None, (e, slice(0, inter)))
                    refs[f"layers.{i}.ffn.experts.{e}.w3.weight"] = _Ref(
                        name, None, (e, slice(inter, 2 * inter))
                    )
            continue
        ours = N.foreign_to_ours(name)
        if ours is None:
            skipped.append(name)
            continue
        scale = name[: -len(".weight")] + ".scale" if name.endswith(".weight") else None
        refs[ours] = _Ref(name, scale if scale in src else None)
    return refs, skipped


def read_ref(src: TensorSource, ref: _Ref, report: LoadReport | None = None) -> torch.Tensor:
    t = src.get(ref.name)
    if ref.expert is not None:
        e, rows = ref.expert
        return t[e][rows].clone()
    t, kind = dequantize(t, src.get(ref.scale) if ref.scale else None)
    if report is not None and kind != "none":
        setattr(report, kind, getattr(report, kind) + 1)
    return t


def _allowed_missing(name: str, cfg: ModelConfig) -> bool:
    """Tensors a foreign layout may lack: the (unused) selection bias of hash-routed layers."""
    layer = N.split_layer(name)
    return name.endswith("ffn.gate.bias") and layer is not None and layer[0] < cfg.n_hash_layers


def _rebuild_transient_buffers(model: torch.nn.Module) -> None:
    """Non-persistent buffers are not in any checkpoint: recompute them after `to_empty`."""
    from dsv4.model.rope import rope_frequencies

    known = {"freqs", "load"}
    for mod_name, mod in model.named_modules():
        for name, buf in list(mod._buffers.items()):
            if buf is None or name not in mod._non_persistent_buffers_set:
                continue
            if name not in known:
                raise RuntimeError(
                    f"cannot rebuild non-persistent buffer {mod_name}.{name} after a meta build"
                )
            if name == "freqs":
                mod._buffers[name] = rope_frequencies(model.config, model.config.max_seq_len, buf.device)
            else:
                buf.zero_()


def load_foreign(
    directory: str | Path,
    cfg: ModelConfig,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    layout: str = "deepseek",
):
    """Our model with the weights of a DeepSeek / transformers V4 directory, shard by shard."""
    from dsv4.model.transformer import Transformer

    src = TensorSource(directory)
    report = LoadReport(layout=layout, shards=len(src.shards))
    refs, report.skipped = index_source(src, cfg)
    with torch.device("meta"):
        model = Transformer(cfg)
    model = model.to(dtype).to_empty(device=device)
    _rebuild_transient_buffers(model)
    own = model.state_dict()
    want = set(own) - ({"head.weight"} if cfg.tie_embeddings else set())
    missing = sorted(n for n in want - set(refs) if not _allowed_missing(n, cfg))
    if missing:
        raise UserError(
            f"{directory}: no tensor for {missing[0]} ({len(missing)} missing; "
            f"does config.json describe these weights?)"
        )
    extra = sorted(n for n in refs if n not in own)
    if extra:
        raise UserError(
            f"{directory}: tensor for {extra[0]} does not fit this config "
            f"({refs[extra[0]].name}); does config.json describe these weights?"
        )
    by_source: dict[str, list[str]] = {}
    for ours, ref in refs.items():
        by_source.setdefault(ref.name, []).append(ours)
    with torch.no_grad():
        for _shard, names in src.by_shard():  # one shard at a time: bounded memory
            for source in names:
                for ours in by_source.get(source, []):
                    t = read_ref(src, refs[ours], report)
                    target = own[ours]
                    if tuple(t.shape) != tuple(target.shape):
                        raise UserError(
                            f"{directory}: {source} has shape {tuple(t.shape)}, "
                            f"the config implies {tuple(target.shape)} for {ours}"
                        )
                    target.copy_(t.to(target.dtype))
                    report.tensors += 1
        for name in sorted(want - set(refs)):
            own[name].zero_()
            report.zero_filled.append(name)
    return model.eval(), report


# ---- writing DeepSeek's layout ----------------------------------------------------------------


def write_native(
    src: TensorSource,
    cfg: ModelConfig,
    out: Path,
    quantize: bool = False,
    fp4_experts: bool = True,
    max_shard_bytes: int = 0,
    dtype: torch.dtype | None = None,
    skip=lambda name: False,
) -> list[str]:
    """Write the tensors of our checkpoint `src` under DeepSeek's names into `out`.

    quantize: FP8 (128x128 blocks) for the weights DeepSeek stores in FP8, FP4 (per-32) for
    routed experts when fp4_experts, bf16 for the other linear/norm weights, fp32 for mHC,
    ape, sinks and biases, int32 tid2eid -- the released layout. Otherwise tensors keep
    their dtype (or `dtype`), as transformers expects for an unquantised model."""
    plan: list[Planned] = []
    for name in src.keys():
        if skip(name):
            continue
        layer = N.split_layer(name)
        is_hash_layer = layer is not None and layer[0] < cfg.n_hash_layers
        if name.endswith("ffn.gate.bias") and is_hash_layer:
            continue  # DeepSeek's hash gates have no bias
        theirs = N.ours_to_deepseek(name)
        shape, sdt = src.shape(name), src.dtype(name)
        if not quantize:
            odt = dtype if dtype is not None and sdt.is_floating_point else sdt
            plan.append(Planned(theirs, shape, odt, lambda n=name, d=odt: src.get(n).to(d)))
            continue
        if name.endswith("tid2eid"):
            plan.append(Planned(theirs, shape, torch.int32, lambda n=name: src.get(n).to(torch.int32)))
        elif ".ffn.experts." in name and fp4_experts:
            plan.append(
                Planned(
                    theirs,
                    (shape[0], shape[1] // 2),
                    torch.float4_e2m1fn_x2,
                    lambda n=name: quantize_fp4(src.get(n))[0],
                )
            )
            plan.append(
                Planned(
                    theirs[: -len(".weight")] + ".scale",
                    (shape[0], shape[1] // FP4_GROUP),
                    torch.float8_e8m0fnu,
                    lambda n=name: quantize_fp4(src.get(n))[1],
                )
            )
        elif name.endswith(FP8_SUFFIXES) or ".ffn.experts." in name:
            so, si = -(-shape[0] // FP8_BLOCK), -(-shape[1] // FP8_BLOCK)
            plan.append(
                Planned(theirs, shape, torch.float8_e4m3fn, lambda n=name: quantize_fp8(src.get(n))[0])
            )
            plan.append(
                Planned(
                    theirs[: -len(".weight")] + ".scale",
                    (so, si),
                    torch.float8_e8m0fnu,
                    lambda n=name: quantize_fp8(src.get(n))[1],
                )
            )
        elif name.endswith(".weight"):
            plan.append(Planned(theirs, shape, torch.bfloat16, lambda n=name: src.get(n).to(torch.bfloat16)))
        else:  # mHC parameters, ape, sinks, gate bias: fp32
            plan.append(Planned(theirs, shape, torch.float32, lambda n=name: src.get(n).float()))
    out.mkdir(parents=True, exist_ok=True)
    return write_sharded(out, plan, max_shard_bytes)


def deepseek_config(cfg: ModelConfig, quantized: bool = True, fp4_experts: bool = True) -> dict:
    """An inference/config.json (ModelArgs keys) for cfg; compress_ratios gets the MTP entry."""
    d = {k: getattr(cfg, k) for k in DS_DEFAULTS if k in ModelConfig.__dataclass_fields__}
    d["rope_head_dim"] = cfg.rope_dim
    d["compress_ratios"] = list(cfg.compress_ratios or [0] * cfg.n_layers) + [0] * cfg.n_mtp_layers
    d["moe_inter_dim"] = cfg.moe_inter_dim or cfg.ffn_dim
    if quantized:
        d.update(dtype="fp8", scale_fmt="ue8m0", expert_dtype="fp4" if fp4_experts else None)
    return d


def read_config(directory: Path) -> dict:
    try:
        d = json.loads((directory / "config.json").read_text())
    except FileNotFoundError:
        raise UserError(f"{directory / 'config.json'} is missing") from None
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {directory / 'config.json'}: {e}") from None
    if not isinstance(d, dict):
        raise UserError(f"{directory / 'config.json'} is not a JSON object")
    return d
