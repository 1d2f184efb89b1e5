"""Parameter-name tables between our model and the two external V4 layouts.

Our names already follow DeepSeek's released inference code for attention and MoE
(`attn.wq_a`, `ffn.gate.tid2eid`, ...). What differs:

  ours                          DeepSeek inference/          transformers DeepseekV4
  layers.i.attn_residual.phi    layers.i.hc_attn_fn          model.layers.i.attn_hc.fn
  layers.i.attn_residual.alpha  layers.i.hc_attn_scale       model.layers.i.attn_hc.scale
  layers.i.attn_residual.bias   layers.i.hc_attn_base        model.layers.i.attn_hc.base
  hc_head.phi / alpha / bias    hc_head_fn / _scale / _base  model.hc_head.hc_fn / hc_scale / hc_base
  mtp.block.<layer part>        mtp.0.<layer part>           (absent)
  ffn.experts.e.w1, w3, w2      same                         mlp.experts.gate_up_proj[e] = cat(w1, w3),
                                                             mlp.experts.down_proj[e] = w2

A hash-routed layer has no selection bias in either layout (ours keeps a zero buffer).
The tables are (ours, theirs) suffix pairs; longest match wins, so `norm.weight` and
`attn_norm.weight` never collide.
"""

from __future__ import annotations

import re

# ---- transformers -----------------------------------------------------------------------

HF_LAYER = [
    ("attn_norm.weight", "input_layernorm.weight"),
    ("ffn_norm.weight", "post_attention_layernorm.weight"),
    ("attn_residual.phi", "attn_hc.fn"),
    ("attn_residual.alpha", "attn_hc.scale"),
    ("attn_residual.bias", "attn_hc.base"),
    ("ffn_residual.phi", "ffn_hc.fn"),
    ("ffn_residual.alpha", "ffn_hc.scale"),
    ("ffn_residual.bias", "ffn_hc.base"),
    ("attn.attn_sink", "self_attn.sinks"),
    ("attn.wq_a.weight", "self_attn.q_a_proj.weight"),
    ("attn.q_norm.weight", "self_attn.q_a_norm.weight"),
    ("attn.wq_b.weight", "self_attn.q_b_proj.weight"),
    ("attn.wkv.weight", "self_attn.kv_proj.weight"),
    ("attn.kv_norm.weight", "self_attn.kv_norm.weight"),
    ("attn.wo_a.weight", "self_attn.o_a_proj.weight"),
    ("attn.wo_b.weight", "self_attn.o_b_proj.weight"),
    ("attn.compressor.wkv.weight", "self_attn.compressor.kv_proj.weight"),
    ("attn.compressor.wgate.weight", "self_attn.compressor.gate_proj.weight"),
    ("attn.compressor.ape", "self_attn.compressor.position_bias"),
    ("attn.compressor.norm.weight", "self_attn.compressor.kv_norm.weight"),
    ("attn.indexer.wq_b.weight", "self_attn.compressor.indexer.q_b_proj.weight"),
    ("attn.indexer.weights_proj.weight", "self_attn.compressor.indexer.scorer.weights_proj.weight"),
    ("attn.indexer.compressor.wkv.weight", "self_attn.compressor.indexer.kv_proj.weight"),
    ("attn.indexer.compressor.wgate.weight", "self_attn.compressor.indexer.gate_proj.weight"),
    ("attn.indexer.compressor.ape", "self_attn.compressor.indexer.position_bias"),
    ("attn.indexer.compressor.norm.weight", "self_attn.compressor.indexer.kv_norm.weight"),
    ("ffn.gate.weight", "mlp.gate.weight"),
    ("ffn.gate.bias", "mlp.gate.e_score_correction_bias"),
    ("ffn.gate.tid2eid", "mlp.gate.tid2eid"),
    ("ffn.shared_experts.w1.weight", "mlp.shared_experts.gate_proj.weight"),
    ("ffn.shared_experts.w3.weight", "mlp.shared_experts.up_proj.weight"),
    ("ffn.shared_experts.w2.weight", "mlp.shared_experts.down_proj.weight"),
]
HF_TOP = [
    ("embed.weight", "model.embed_tokens.weight"),
    ("norm.weight", "model.norm.weight"),
    ("head.weight", "lm_head.weight"),
    ("hc_head.phi", "model.hc_head.hc_fn"),
    ("hc_head.alpha", "model.hc_head.hc_scale"),
    ("hc_head.bias", "model.hc_head.hc_base"),
]
HF_GATE_UP, HF_DOWN = "mlp.experts.gate_up_proj", "mlp.experts.down_proj"

# ---- DeepSeek inference/ ----------------------------------------------------------------

DS_LAYER = [
    ("attn_residual.phi", "hc_attn_fn"),
    ("attn_residual.alpha", "hc_attn_scale"),
    ("attn_residual.bias", "hc_attn_base"),
    ("ffn_residual.phi", "hc_ffn_fn"),
    ("ffn_residual.alpha", "hc_ffn_scale"),
    ("ffn_residual.bias", "hc_ffn_base"),
]
DS_TOP = [("hc_head.phi", "hc_head_fn"), ("hc_head.alpha", "hc_head_scale"), ("hc_head.bias", "hc_head_base")]
MTP_OWN = ("enorm.", "hnorm.", "e_proj.", "h_proj.", "norm.", "hc_head")

_LAYER = re.compile(r"^layers\.(\d+)\.(.+)$")


def _swap(suffix: str, table: list[tuple[str, str]], forward: bool) -> str | None:
    src, dst = (0, 1) if forward else (1, 0)
    for pair in table:
        if suffix == pair[src]:
            return pair[dst]
    return None


def split_layer(name: str) -> tuple[int, str] | None:
    m = _LAYER.match(name)
    return (int(m.group(1)), m.group(2)) if m else None


def hf_to_ours(name: str) -> str | None:
    """Our name of a transformers tensor; None for stacked experts and unmapped ones."""
    top = _swap(name, HF_TOP, False)
    if top is not None:
        return top
    if not name.startswith("model.layers."):
        return None
    layer = split_layer(name[len("model.") :])
    if layer is None:
        return None
    ours = _swap(layer[1], HF_LAYER, False)
    return f"layers.{layer[0]}.{ours}" if ours else None


def _ds_layer_suffix(suffix: str, to_ours: bool) -> str:
    return _swap(suffix, DS_LAYER, not to_ours) or suffix


def deepseek_to_ours(name: str) -> str | None:
    """Our name for a tensor of DeepSeek's inference layout (None: not part of our model)."""
    top = _swap(name, DS_TOP, False)
    if top is not None:
        return top
    if name in ("embed.weight", "head.weight", "norm.weight"):
        return name
    layer = split_layer(name)
    if layer is not None:
        return f"layers.{layer[0]}.{_ds_layer_suffix(layer[1], True)}"
    m = re.match(r"^mtp\.0\.(.+)$", name)
    if m is None:
        return None
    rest = m.group(1)
    if rest.startswith("hc_head_"):
        return "mtp." + _swap(rest, DS_TOP, False)
    if rest.startswith(MTP_OWN):
        return "mtp." + rest
    return "mtp.block." + _ds_layer_suffix(rest, True)


def ours_to_deepseek(name: str) -> str:
    top = _swap(name, DS_TOP, True)
    if top is not None:
        return top
    layer = split_layer(name)
    if layer is not None:
        return f"layers.{layer[0]}.{_ds_layer_suffix(layer[1], False)}"
    if name.startswith("mtp.block."):
        return "mtp.0." + _ds_layer_suffix(name[len("mtp.block.") :], False)
    if name.startswith("mtp.hc_head."):
        return "mtp.0." + _swap(name[len("mtp.") :], DS_TOP, True)
    if name.startswith("mtp."):
        return "mtp.0." + name[len("mtp.") :]
    return name


# ---- any external dialect -> ours ---------------------------------------------------------

_HF_TOP_ALIASES = {
    "embed_tokens.weight": "embed.weight",
    "lm_head.weight": "head.weight",
    "hc_head.hc_fn": "hc_head.phi",
    "hc_head.hc_scale": "hc_head.alpha",
    "hc_head.hc_base": "hc_head.bias",
}
_HF_MARKERS = ("self_attn.", "mlp.", "input_layernorm.", "post_attention_layernorm.", "attn_hc.", "ffn_hc.")
_STACKED = re.compile(r"^layers\.(\d+)\.mlp\.experts\.(gate_up_proj|down_proj)$")


def foreign_to_ours(name: str) -> str | None:
    """Our name for a tensor named in any V4 dialect: DeepSeek's released layout
    (`layers.0.attn.wq_a.weight`), the same under a `model.` prefix (what transformers'
    save_pretrained writes, where the attention `kv_norm` is saved as `attn.norm`), or
    transformers' module names (`model.layers.0.self_attn.q_a_proj.weight`). None for
    stacked expert tensors (see `stacked_experts`) and names outside our model."""
    if name.startswith("model."):
        name = name[len("model.") :]
    if name in _HF_TOP_ALIASES:
        return _HF_TOP_ALIASES[name]
    layer = split_layer(name)
    if layer is not None:
        suffix = layer[1]
        if suffix.startswith(_HF_MARKERS):
            return hf_to_ours(f"model.{name}")
        if suffix == "attn.norm.weight":  # transformers' save-time spelling of attn.kv_norm
            suffix = "attn.kv_norm.weight"
        return f"layers.{layer[0]}.{_ds_layer_suffix(suffix, True)}"
    return deepseek_to_ours(name)


def stacked_experts(name: str) -> tuple[int, str] | None:
    """(layer, "gate_up_proj"|"down_proj") for transformers' stacked expert tensors."""
    m = _STACKED.match(name[len("model.") :] if name.startswith("model.") else name)
    return (int(m.group(1)), m.group(2)) if m else None
