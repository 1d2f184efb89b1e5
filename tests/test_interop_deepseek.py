"""DeepSeek's released layout: FP8 (128x128 block) / FP4 (per-32) quantisation, loading
shard by shard, and `dsv4 model summary --ckpt`.

A tiny model (every layer type, hash + routed MoE, hc_mult 4, an MTP block) is written in
the released layout by `write_native(quantize=True)`: FP8 for the weights DeepSeek stores
in FP8, FP4 for routed experts, bf16 / fp32 / int32 elsewhere, several shards. Loading it
must give back, exactly, every tensor that was not quantised, and the quantised ones
within the format's error; the logits must stay close to those of the bf16 source.
"""

from __future__ import annotations

import json

import pytest
import torch

from dsv4.cli import main
from dsv4.errors import UserError
from dsv4.interop import st_io
from dsv4.interop.deepseek import (
    FP4_VALUES,
    dequantize_fp4,
    dequantize_fp8,
    quantize_fp4,
    quantize_fp8,
)
from dsv4.interop.formats import detect_layout, load_checkpoint
from dsv4.interop.hf import config_to_hf
from dsv4.interop.st_io import TensorSource
from dsv4.model.load import load_model
from interop_helpers import our_model, save_ours, write_released


def test_fp8_block_quantisation():
    w = torch.randn(200, 300) * torch.logspace(-3, 1, 300)  # columns of very different magnitudes
    q, s = quantize_fp8(w)
    assert q.dtype == torch.float8_e4m3fn and s.dtype == torch.float8_e8m0fnu and s.shape == (2, 3)
    sf = s.float()
    assert torch.equal(sf, torch.exp2(torch.log2(sf).round()))  # powers of two (ue8m0)
    back = dequantize_fp8(q, s)
    block_scale = sf.repeat_interleave(128, 0)[:200].repeat_interleave(128, 1)[:, :300]
    # e4m3: 3 mantissa bits -> relative error <= 2^-4, plus the subnormal step 2^-10 * scale
    assert ((back - w).abs() <= w.abs() * 2**-4 + block_scale * 2**-10).all()
    assert (w.abs().amax() / 448 <= sf.max()) and (w.abs() / block_scale <= 448).all()


def test_fp4_quantisation_and_packing():
    w = torch.randn(8, 64)
    q, s = quantize_fp4(w)
    assert q.dtype == torch.float4_e2m1fn_x2 and q.shape == (8, 32) and s.shape == (8, 2)
    back = dequantize_fp4(q, s)
    scale = s.float().repeat_interleave(32, 1)
    assert ((back - w).abs() <= scale).all()  # the widest e2m1 gap (4 -> 6) is 2 * scale
    assert ((back / scale).unsqueeze(-1) == FP4_VALUES).any(-1).all()  # every value on the e2m1 grid
    # layout: two values per byte, the even input index in the low nibble; sign bit 8
    v = torch.zeros(1, 32)
    v[0, 0], v[0, 1], v[0, 2], v[0, 3] = 0.5, 6.0, -1.0, 3.0
    q, s = quantize_fp4(v)
    assert s.float().item() == 1.0
    b = q.view(torch.uint8)[0]
    assert b[0].item() == 0x71 and b[1].item() == 0x5A  # (6.0 -> 7 | 0.5 -> 1), (3.0 -> 5 | -1.0 -> 8+2)


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """(source model with bf16-rounded weights, DeepSeek-layout dir, our checkpoint dir)."""
    root = tmp_path_factory.mktemp("ds")
    # init-scale weight matrices (random norms, gates, mHC, sinks, biases): a well-conditioned
    # model, so the logits measure the quantisation error rather than amplify it chaotically
    model = our_model(seed=7, matrices=False, n_mtp_layers=1)
    with torch.no_grad():  # the release stores these in bf16: make the source exactly representable
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    ours, ds = save_ours(model, root / "ours"), root / "ds"
    files = write_released(ours, model.config, ds, max_shard_bytes=60_000)
    assert len(files) > 2
    return model, ds, ours


def _names_by_kind(ds):
    src = TensorSource(ds)
    fp8 = [k for k in src.keys() if src.dtype(k) == torch.float8_e4m3fn]
    fp4 = [k for k in src.keys() if src.dtype(k) == torch.float4_e2m1fn_x2]
    return src, fp8, fp4


def test_released_layout_loads_within_quantisation_error(released):
    model, ds, _ = released
    src, fp8, fp4 = _names_by_kind(ds)
    assert "layers.1.attn.wq_a.weight" in fp8 and "layers.0.ffn.experts.0.w1.weight" in fp4
    assert src.dtype("layers.0.ffn.gate.tid2eid") == torch.int32 and "layers.0.ffn.gate.bias" not in src
    assert src.dtype("layers.2.hc_attn_fn") == torch.float32 and "mtp.0.hc_head_fn" in src
    assert detect_layout(ds) == "deepseek"
    loaded, report = load_checkpoint(ds)
    assert (
        report.fp8 == len(fp8) and report.fp4 == len(fp4) and report.zero_filled == ["layers.0.ffn.gate.bias"]
    )
    assert loaded.config.n_mtp_layers == 1 and loaded.config.compress_ratios == [0, 4, 8, 4]
    want, got = model.state_dict(), loaded.state_dict()
    quantized = set()
    from dsv4.interop.names import foreign_to_ours

    for k in fp8 + fp4:
        quantized.add(foreign_to_ours(k))
    for k, v in want.items():
        if k in quantized:
            err = (got[k] - v).abs().max() / v.abs().max()
            assert err < (0.34 if ".experts." in k and "shared" not in k else 0.07), k
            assert err > 0, k  # really went through the quantiser
        else:
            assert torch.equal(got[k], v), k
    ids = torch.randint(0, 256, (1, 96), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref, out = model(ids), loaded(ids)
    cos = torch.nn.functional.cosine_similarity(ref.flatten(), out.flatten(), dim=0)
    assert cos > 0.999 and (out - ref).abs().max() < 0.1 * ref.abs().max()
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() > 0.9


def test_loading_reads_one_shard_at_a_time(released, monkeypatch):
    _, ds, _ = released
    open_now, peak, opened = [0], [0], []
    real = st_io.TensorSource._open

    class Tracked:
        def __init__(self, h, shard):
            self.h, self.shard = h, shard

        def __enter__(self):
            open_now[0] += 1
            peak[0] = max(peak[0], open_now[0])
            opened.append(self.shard)
            return self.h.__enter__()

        def __exit__(self, *a):
            open_now[0] -= 1
            return self.h.__exit__(*a)

    monkeypatch.setattr(st_io.TensorSource, "_open", lambda self, shard: Tracked(real(self, shard), shard))
    load_model(ds)
    assert peak[0] == 1 and open_now[0] == 0
    n = len(TensorSource(ds).shards)
    # headers once per shard, then each shard's tensors (a scale stored in the next shard
    # may reopen one); far below one open per tensor
    assert len(opened) <= 4 * n


def test_transformers_style_config_and_summary(released, tmp_path, capsys):
    """DeepSeek's repos ship a transformers-style config.json beside the native weights."""
    model, ds, _ = released
    alt = tmp_path / "alt"
    alt.mkdir()
    for f in ds.iterdir():
        if f.name != "config.json":
            (alt / f.name).symlink_to(f)
    cfg_no_mtp = our_model(seed=7).config
    hf = {**config_to_hf(cfg_no_mtp), "num_nextn_predict_layers": 1}
    hf.pop("dsv4_config")
    (alt / "config.json").write_text(json.dumps(hf))
    loaded = load_model(alt)
    assert loaded.config.n_mtp_layers == 1 and loaded.config.compress_ratios == [0, 4, 8, 4]
    assert main(["model", "summary", "--ckpt", str(alt), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["loaded"]["layout"] == "deepseek" and out["loaded"]["fp8_dequantized"] > 0
    assert out["loaded"]["fp4_dequantized"] == 4 * 3 * 5  # 4 experts x w1/w2/w3 x (4 layers + MTP)
    # and --from-hf converts DeepSeek's FP8/FP4 release into our checkpoint (dequantised to
    # bf16, MTP block included), equal to loading the release directly up to that rounding
    assert main(["convert", "--from-hf", str(ds), "--out", str(tmp_path / "ck")]) == 0
    conv, direct = load_model(tmp_path / "ck"), load_model(ds)
    assert conv.config == direct.config and conv.config.n_mtp_layers == 1
    for k, v in direct.state_dict().items():  # dequantised tensors stored as bf16, the others as they were
        c = conv.state_dict()[k]
        assert torch.equal(c, v) or torch.equal(c, v.to(torch.bfloat16).to(v.dtype)), k


def test_summary_of_our_checkpoint(released, capsys):
    _, _, ours = released
    assert main(["model", "summary", "--ckpt", str(ours)]) == 0
    text = capsys.readouterr().out
    assert "loaded: layout dsv4" in text


def test_released_flash_config_is_our_v4_flash_preset():
    """DeepSeek-V4-Flash's inference/config.json (values of the release) parses to our preset."""
    from dsv4.config import make_config
    from dsv4.interop.deepseek import config_from_deepseek

    released = dict(
        vocab_size=129280,
        dim=4096,
        moe_inter_dim=2048,
        n_layers=43,
        n_hash_layers=3,
        n_heads=64,
        n_routed_experts=256,
        n_shared_experts=1,
        n_activated_experts=6,
        score_func="sqrtsoftplus",
        route_scale=1.5,
        swiglu_limit=10.0,
        q_lora_rank=1024,
        head_dim=512,
        rope_head_dim=64,
        o_groups=8,
        o_lora_rank=1024,
        window_size=128,
        original_seq_len=65536,
        rope_theta=10000,
        rope_factor=16,
        beta_fast=32,
        beta_slow=1,
        index_n_heads=64,
        index_head_dim=128,
        index_topk=512,
        hc_mult=4,
        hc_sinkhorn_iters=20,
        dtype="fp8",
        scale_fmt="ue8m0",
        expert_dtype="fp4",
        compress_rope_theta=160000,
        compress_ratios=[0, 0] + [4, 128] * 20 + [4, 0],  # 43 layers + the MTP block's entry
    )
    got, want = config_from_deepseek(released, has_mtp=True), make_config("v4-flash")
    for key in (
        "dim",
        "n_layers",
        "n_heads",
        "head_dim",
        "rope_dim",
        "q_lora_rank",
        "o_groups",
        "o_lora_rank",
        "window_size",
        "compress_ratios",
        "index_n_heads",
        "index_head_dim",
        "index_topk",
        "n_routed_experts",
        "n_activated_experts",
        "moe_inter_dim",
        "n_hash_layers",
        "route_scale",
        "swiglu_limit",
        "hc_mult",
        "rope_factor",
        "original_seq_len",
        "compress_rope_theta",
        "rope_theta",
        "n_mtp_layers",
        "vocab_size",
    ):
        assert getattr(got, key) == getattr(want, key), key
    with pytest.raises(UserError, match="unknown key"):
        config_from_deepseek({**released, "n_dense_layers": 1})
