"""Attention switches inside the model: baseline unchanged, YaRN tables, V4 layers end to end."""

import math

import torch

from dsv4.config import make_config
from dsv4.model import attention as attn_mod
from dsv4.model import build_model
from dsv4.model.attention import Attention, set_indexer_stage
from dsv4.model.rope import apply_rope, rope_frequencies, rope_table, yarn_inv_freq
from dsv4.model.transformer import ForwardContext

# the "baseline" preset is every switch off by definition; shrink it for speed
SMALL = dict(vocab_size=2048, dim=64, n_layers=2, n_heads=2, head_dim=32, max_seq_len=256)
V4 = dict(shared_kv=True, q_lora_rank=32, o_groups=2, o_lora_rank=16, attn_sink=True, window_size=8,
          compress_ratios=[4, 16], index_n_heads=4, index_head_dim=32, index_topk=4, rope_head_dim=16,
          max_seq_len=256)


def plain_mha(a: Attention, x: torch.Tensor, freqs: torch.Tensor, window: int = 0) -> torch.Tensor:
    """Textbook causal multi-head (grouped-query) attention with partial RoPE (no SDPA)."""
    B, T, _ = x.shape
    H, D, G = a.n_heads, a.head_dim, a.n_kv
    q = apply_rope(a.wq(x).view(B, T, H, D), freqs).transpose(1, 2)
    k = apply_rope(a.wk(x).view(B, T, G, D), freqs).transpose(1, 2).repeat_interleave(H // G, 1)
    v = a.wv(x).view(B, T, G, D).transpose(1, 2).repeat_interleave(H // G, 1)
    s = q @ k.transpose(-1, -2) / math.sqrt(D)
    hidden = torch.ones(T, T, dtype=torch.bool).triu(1)
    if window:
        hidden |= torch.ones(T, T, dtype=torch.bool).tril(-window)
    s = s.masked_fill(hidden, float("-inf"))
    return a.wo((s.softmax(-1) @ v).transpose(1, 2).reshape(B, T, -1))


def test_baseline_attention_is_plain_mha():
    cfg = make_config("baseline", **SMALL, rope_head_dim=16)
    torch.manual_seed(0)
    a = Attention(cfg, 0)
    assert a.plain
    assert {n for n, _ in a.named_parameters()} == {"wq.weight", "wk.weight", "wv.weight", "wo.weight"}
    x = torch.randn(2, 20, cfg.dim)
    freqs = rope_frequencies(cfg, 20)
    ctx = ForwardContext(ids=torch.zeros(2, 20, dtype=torch.long), freqs=freqs)
    with torch.no_grad():
        want = plain_mha(a, x, freqs)
        torch.testing.assert_close(a(x, ctx), want, atol=1e-5, rtol=1e-5)
        # the chunked hybrid path with a window wider than the sequence is the same attention
        b = Attention(make_config("baseline", **SMALL, rope_head_dim=16, window_size=64), 0)
        b.load_state_dict(a.state_dict())
        assert not b.plain
        torch.testing.assert_close(b(x, ctx), want, atol=1e-5, rtol=1e-5)


def test_windowed_gqa_over_chunks_is_masked_mha(monkeypatch):
    monkeypatch.setattr(attn_mod, "MIN_CHUNK", 8)
    gqa = dict(rope_head_dim=16, n_heads=4, head_dim=16, n_kv_heads=2, window_size=7)
    cfg = make_config("baseline", **{**SMALL, **gqa})
    torch.manual_seed(0)
    a = Attention(cfg, 0)
    x = torch.randn(2, 45, cfg.dim)
    freqs = rope_frequencies(cfg, 45)
    ctx = ForwardContext(ids=torch.zeros(2, 45, dtype=torch.long), freqs=freqs)
    with torch.no_grad():
        torch.testing.assert_close(a(x, ctx), plain_mha(a, x, freqs, window=7), atol=1e-5, rtol=1e-5)


def test_yarn_factor_one_is_plain_rope_and_factor_scales_low_frequencies():
    plain = rope_table(32, 64, 10000.0)
    assert torch.equal(rope_table(32, 64, 10000.0, original_seq_len=4096, factor=1.0), plain)
    angles = torch.arange(0, 32, 2, dtype=torch.float32) / 32
    torch.testing.assert_close(plain[5], torch.polar(torch.ones(16), 5 / 10000.0 ** angles))
    base = yarn_inv_freq(32, 10000.0, 0, 1.0, 32, 1)
    scaled = yarn_inv_freq(32, 10000.0, 4096, 40.0, 32, 1)
    assert scaled[0] == base[0]  # fastest pair: > beta_fast turns in 4096 tokens, kept
    torch.testing.assert_close(scaled[-1], base[-1] / 40)  # slowest pair: < beta_slow turns, interpolated
    ratio = scaled / base
    assert torch.all(ratio[1:] <= ratio[:-1])  # monotone ramp between the two
    # V4: window-only layers never get YaRN, compressed layers use compress_rope_theta + YaRN
    yarn = dict(rope_factor=16.0, original_seq_len=64, compress_rope_theta=160000.0)
    cfg = make_config("baseline", **{**SMALL, **V4, **yarn})
    torch.testing.assert_close(rope_frequencies(cfg, 50), rope_table(cfg.rope_dim, 50, cfg.rope_theta))
    torch.testing.assert_close(rope_frequencies(cfg, 50, kind="compress"),
                               rope_table(cfg.rope_dim, 50, 160000.0, 64, 16.0))
    # the baseline (no compressed layer) keeps YaRN on its single table
    base_cfg = make_config("baseline", **SMALL, rope_factor=16.0, original_seq_len=64)
    plain_base = rope_table(base_cfg.rope_dim, 50, base_cfg.rope_theta)
    assert not torch.allclose(rope_frequencies(base_cfg, 50), plain_base)


def test_v4_model_trains_and_is_causal():
    torch.manual_seed(0)
    model = build_model("baseline", **{**SMALL, **V4})
    ids = torch.randint(0, model.config.vocab_size, (2, 150))  # fills 37 CSA blocks, 9 HCA blocks, 3 chunks
    loss, stats = model.loss(ids, ids)
    assert math.isfinite(stats["indexer_kl"]) and stats["indexer_loss"] > 0
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        for stage in ("sparse", "dense"):
            set_indexer_stage(model, stage)
            a = model(ids)
            changed = ids.clone()
            changed[:, 98:] = (changed[:, 98:] + 1) % model.config.vocab_size  # mid-block for r=4 and r=16
            b = model(changed)
            torch.testing.assert_close(a[:, :98], b[:, :98], atol=0, rtol=0)
            assert not torch.allclose(a[:, 98:], b[:, 98:])


def test_eval_forward_skips_kl_and_state_dict_roundtrips():
    torch.manual_seed(0)
    model = build_model("baseline", **{**SMALL, **V4}).eval()
    ids = torch.randint(0, model.config.vocab_size, (1, 40))
    with torch.no_grad():
        _, stats = model.loss(ids, ids)
    assert "indexer_kl" not in stats
    other = build_model("baseline", **{**SMALL, **V4}).eval()
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(other(ids), model(ids), atol=0, rtol=0)
