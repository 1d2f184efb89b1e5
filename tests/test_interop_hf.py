"""Conversion to and from transformers' DeepseekV4, cross-checked against its forward pass.

The tiny config (interop_helpers.HF_TINY) has every layer type -- sliding window, CSA (with
the lightning indexer choosing top-4 of the compressed entries) and HCA -- a hash-routed and
routed MoE layers, hc_mult 4 and YaRN on the compressed layers; 150 tokens span several
compressed blocks and several attention chunks. Every parameter and learned buffer is
random, so a swapped, transposed or mis-sliced tensor changes the logits.

Where transformers and DeepSeek's released inference code disagree we follow DeepSeek. In
fp32 on these configs they agree everywhere we compare; the differences we know of are
outside what a DeepseekV4 checkpoint can express, so the converter refuses them instead:
  - score_func "softmax": DeepSeek does not renormalise the top-k weights, transformers
    always does (norm_topk_prob) -- `hf_compatibility` rejects softmax routing;
  - swiglu_limit 0 (no clamp): DeepSeek skips the clamp, transformers clamps at the limit
    whatever it is -- rejected;
  - a model without compressed layers: we follow DeepSeek (no YaRN on window-only tables)
    only when compressed layers exist; rejected when YaRN would differ.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from dsv4.cli import main
from dsv4.errors import UserError
from dsv4.interop.hf import config_from_hf, config_to_hf
from dsv4.model.load import load_model
from interop_helpers import OURS_TINY, hf_model, our_model, save_ours

T = 150


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf")
    model = hf_model(seed=1)
    model.save_pretrained(d)
    ids = torch.randint(0, 256, (2, T), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(ids).logits
    return d, ids, ref


def _fails(args, capsys, pattern):
    """The CLI exits 2 with a one-line `dsv4: error:` message matching pattern."""
    assert main(args) == 2
    err = capsys.readouterr().err
    assert re.search(pattern, err) and err.startswith("dsv4: error:") and err.count("\n") == 1, err


def _tensors(path):
    from dsv4.interop.st_io import TensorSource

    src = TensorSource(path)
    return {k: src.get(k) for k in src.keys()}


def test_from_hf_logits_match_transformers(hf_dir, tmp_path):
    d, ids, ref = hf_dir
    assert main(["convert", "--from-hf", str(d), "--out", str(tmp_path / "ck")]) == 0
    model = load_model(tmp_path / "ck")
    cfg = model.config
    assert cfg.compress_ratios == [0, 4, 8, 4] and cfg.n_hash_layers == 1 and cfg.hc_mult == 4
    assert cfg.original_seq_len == 64 and cfg.rope_dim == 16
    with torch.no_grad():
        got = model(ids)
    assert (got - ref).abs().max().item() < 1e-4
    # the transformers directory itself also loads (layout detection in load_model)
    with torch.no_grad():
        direct = load_model(d)(ids)
    assert torch.equal(direct, got)


def test_to_hf_logits_and_bit_exact_roundtrip(tmp_path):
    from transformers import DeepseekV4ForCausalLM

    ours = our_model(seed=3)
    ck = save_ours(ours, tmp_path / "ours")
    out = tmp_path / "hf"
    assert main(["convert", "--to-hf", str(ck), "--out", str(out), "--max-shard-size", "100KB"]) == 0
    assert (out / "model.safetensors.index.json").exists()  # sharded
    hf = DeepseekV4ForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    ids = torch.randint(0, 256, (1, T), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert (hf(ids).logits - ours(ids)).abs().max().item() < 1e-4
    assert main(["convert", "--from-hf", str(out), "--out", str(tmp_path / "back")]) == 0
    a, b = _tensors(ck), _tensors(tmp_path / "back")
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k].view(torch.uint8), b[k].view(torch.uint8)), k
    assert json.loads((tmp_path / "back" / "config.json").read_text()) == ours.config.to_dict()


def test_to_hf_bf16_from_transformers_dialects(hf_dir, tmp_path):
    """transformers' own save names (model.-prefixed DeepSeek names), our native output and
    bf16 casting all map onto the same tensors."""
    d, _, _ = hf_dir
    main(["convert", "--from-hf", str(d), "--out", str(tmp_path / "a")])
    main(["convert", "--to-hf", str(tmp_path / "a"), "--out", str(tmp_path / "h"), "--dtype", "bf16"])
    main(["convert", "--from-hf", str(tmp_path / "h"), "--out", str(tmp_path / "b")])
    a, b = _tensors(tmp_path / "a"), _tensors(tmp_path / "b")
    for k in a:
        want = a[k].to(torch.bfloat16) if a[k].is_floating_point() else a[k]
        assert torch.equal(b[k], want), k


def test_engram_and_mtp_need_drop(tmp_path, capsys):
    from transformers import DeepseekV4ForCausalLM

    full = our_model(
        seed=5, engram_layer_ids=[1], engram_vocab_size=257, engram_dim=32, engram_n_heads=2, n_mtp_layers=1
    )
    ck = save_ours(full, tmp_path / "full")
    _fails(
        ["convert", "--to-hf", str(ck), "--out", str(tmp_path / "x")],
        capsys,
        "no Engram and no MTP.*--drop engram,mtp",
    )
    _fails(
        ["convert", "--to-hf", str(ck), "--out", str(tmp_path / "y"), "--drop", "engram"], capsys, "no MTP"
    )
    assert main(["convert", "--to-hf", str(ck), "--out", str(tmp_path / "z"), "--drop", "engram,mtp"]) == 0
    hf, info = DeepseekV4ForCausalLM.from_pretrained(tmp_path / "z", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    # what transformers computes is our model without those components
    dropped = our_model(seed=5)
    sd = {k: v for k, v in full.state_dict().items() if ".engram." not in k and not k.startswith("mtp.")}
    dropped.load_state_dict(sd)
    ids = torch.randint(0, 256, (1, 40))
    with torch.no_grad():
        assert (hf.eval()(ids).logits - dropped(ids)).abs().max().item() < 1e-4


def test_config_mapping_and_refusals(tmp_path):
    cfg = our_model().config
    hf = config_to_hf(cfg)
    assert (
        hf["layer_types"][2] == "heavily_compressed_attention"
        and hf["compress_rates"]["heavily_compressed_attention"] == 8
    )
    assert hf["rope_parameters"]["compress"]["rope_type"] == "yarn"
    assert hf["rope_parameters"]["compress"]["attention_factor"] == 1.0  # V4: no YaRN mscale
    # without our stash, the transformers fields alone give the same model
    plain = {k: v for k, v in hf.items() if k != "dsv4_config"}
    again = config_from_hf(plain)
    for key in (
        "dim",
        "n_layers",
        "compress_ratios",
        "n_hash_layers",
        "rope_dim",
        "original_seq_len",
        "rope_factor",
    ):
        assert getattr(again, key) == getattr(cfg, key), key
    # legacy DeepSeek spellings that transformers still accepts
    legacy = {**plain, "compress_ratios": [0, 4, 8, 4, 0], "num_hash_layers": 1, "qk_rope_head_dim": 16}
    for k in ("layer_types", "mlp_layer_types", "partial_rotary_factor", "compress_rates"):
        legacy.pop(k)
    legacy["compress_rate_hca"] = 8
    assert config_from_hf(legacy).compress_ratios == [0, 4, 8, 4]
    for bad in (dict(score_func="softmax"), dict(swiglu_limit=0.0), dict(hc_mult=1)):
        with pytest.raises(UserError, match="cannot be a transformers DeepseekV4"):
            config_to_hf(our_model(**bad).config)
    with pytest.raises(UserError, match="hash_moe layers must come first"):
        config_from_hf({**plain, "mlp_layer_types": ["moe", "hash_moe", "moe", "moe"]})


def test_bad_inputs_are_user_errors(hf_dir, tmp_path, capsys):
    d, _, _ = hf_dir
    _fails(
        ["convert", "--from-hf", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
        capsys,
        "not a directory",
    )
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    _fails(["convert", "--from-hf", str(d), "--out", str(tmp_path / "full")], capsys, "not empty")
    ck = save_ours(our_model(), tmp_path / "ck")
    _fails(
        ["convert", "--to-hf", str(ck), "--out", str(tmp_path / "o2"), "--drop", "attention"],
        capsys,
        "--drop accepts",
    )
    _fails(
        ["convert", "--to-hf", str(ck), "--out", str(tmp_path / "o4"), "--max-shard-size", "lots"],
        capsys,
        "--max-shard-size",
    )
    # a config that does not describe the weights
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in d.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((bad / "config.json").read_text())
    cfg["moe_intermediate_size"] = 48
    (bad / "config.json").write_text(json.dumps(cfg))
    _fails(["convert", "--from-hf", str(bad), "--out", str(tmp_path / "o3")], capsys, "shape")
    assert OURS_TINY["n_mtp_layers"] == 0
