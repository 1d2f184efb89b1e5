"""Engram: compression map, multi-head N-gram hashing, gating, short conv, causality, optimizer group."""

import pytest
import torch

from dsv4.config import make_config
from dsv4.errors import UserError
from dsv4.model import build_model
from dsv4.model.engram import Engram
from dsv4.model.engram_hash import (
    INT64_MAX,
    _is_prime,
    compression_map,
    engram_addresses,
    engram_multipliers,
    engram_primes,
    normalize_token_text,
)
from dsv4.model.transformer import ForwardContext

# Every switch off except what a test turns on (the `tiny` preset has all components on).
SMALL = dict(vocab_size=2048, dim=64, n_layers=2, n_heads=2, head_dim=32, max_seq_len=128)

ENGRAM = dict(engram_layer_ids=[0, 1], engram_vocab_size=211, engram_dim=48, engram_n_heads=4,
              engram_ngram_orders=[2, 3])


class FakeTokenizer:
    """decode([id]) -> text, like dsv4.data.tokenizer.Tokenizer."""

    def __init__(self, pieces):
        self.pieces = pieces
        self.vocab_size = len(pieces)

    def decode(self, ids):
        return "".join(self.pieces[i] for i in ids)


PIECES = ["Hello", "hello", " HELLO ", "héllo", "x", "\t\tX", "\ufffd", "\ufffd", "", "",
          "    ", "  ", "Ｈｅｌｌｏ", "a  b", "A\nB", "other"]


def _ctx(ids):
    return ForwardContext(ids=ids, freqs=torch.zeros(ids.shape[1], 1))


def _engram(layer_id=0, **over):
    cfg = make_config("baseline", **{**SMALL, **ENGRAM, **over})
    torch.manual_seed(0)
    return cfg, Engram(cfg, layer_id)


def test_compression_merges_case_accent_whitespace_variants():
    assert normalize_token_text("  Héllo\t\n World ") == "hello world"
    cmap = compression_map(FakeTokenizer(PIECES), vocab_size=20).tolist()
    same = lambda *ids: len({cmap[i] for i in ids}) == 1
    assert same(0, 1, 2, 3, 12)  # case, surrounding whitespace, accent, NFKC full-width
    assert same(4, 5)  # "x" and "\t\tX"
    assert same(13, 14)  # whitespace runs collapse: "a  b" == "A\nB"
    assert not same(0, 4) and not same(0, 15)
    assert not same(6, 7) and not same(8, 9)  # U+FFFD / empty (special) tokens keep their own ids
    assert not same(10, 11)  # whitespace-only tokens keep their raw text (indentation matters)
    assert len(set(cmap[16:])) == 4  # ids beyond the tokenizer stay distinct
    assert max(cmap) < 20 and len(set(cmap)) == 20 - 6  # 0,1,2,3,12 -> 1 ; 4,5 -> 1 ; 13,14 -> 1


def test_set_engram_tokenizer_fills_buffers_and_checkpoint_reproduces_them():
    model = build_model("baseline", **SMALL, **ENGRAM)
    n = model.set_engram_tokenizer(FakeTokenizer(PIECES))
    assert n == 2048 - 6
    cmap = model.layers[0].engram.compress.clone()
    assert torch.equal(cmap, model.layers[1].engram.compress) and cmap[1] == cmap[0]
    fresh = build_model("baseline", **SMALL, **ENGRAM)
    assert not torch.equal(fresh.layers[0].engram.compress, cmap)  # identity before
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh.layers[0].engram.compress, cmap)
    ids = torch.randint(0, 2048, (1, 16))
    torch.testing.assert_close(fresh(ids), model(ids))
    with pytest.raises(UserError):
        model.set_engram_tokenizer(FakeTokenizer(["a"] * 4096))


def test_primes_are_distinct_primes_at_or_above_the_size():
    primes = engram_primes((0, 3), 2, 8, 1000)
    flat = [p for layer in primes.values() for order in layer for p in order]
    assert len(flat) == 2 * 2 * 8 and len(set(flat)) == len(flat)
    assert all(_is_prime(p) and p >= 1000 for p in flat)
    assert min(flat) == 1009  # the first prime >= 1000
    _, eng = _engram()
    assert eng.moduli.shape == (2, 4) and len(set(eng.moduli.flatten().tolist())) == 8


def test_hashing_is_deterministic_in_range_and_overflow_free():
    cfg, a = _engram()
    _, b = _engram()
    ids = torch.randint(0, cfg.vocab_size, (2, 30))
    rows = a.addresses(ids)
    assert torch.equal(rows, b.addresses(ids)) and torch.equal(a.multipliers, b.multipliers)
    assert (a.multipliers % 2 == 1).all()
    _, other_layer = _engram(layer_id=1)
    assert not torch.equal(other_layer.addresses(ids), rows)  # per-layer multipliers and primes
    lo = a.offsets.view(2, 4)
    hi = lo + a.moduli
    r = rows.view(2, 30, 2, 4)
    assert ((r >= lo) & (r < hi)).all()
    # largest id (the pad) times the largest multiplier stays below 2^63
    m = engram_multipliers(0, 3, cfg.vocab_size + 1)
    assert int(m.max()) * cfg.vocab_size < INT64_MAX
    # the same 3-gram gives the same row wherever it occurs; a different 2-gram a different mix
    seq = torch.tensor([[7, 8, 9, 1, 7, 8, 9]])
    r = a.addresses(seq)
    assert torch.equal(r[0, 2], r[0, 6])


def test_incremental_addresses_match_full_sequence():
    cfg, eng = _engram()
    ids = torch.randint(0, cfg.vocab_size, (2, 12))
    full = eng.addresses(ids)
    for t in range(2, 12):
        step = eng.addresses(ids[:, t:t + 1], prefix_ids=ids[:, t - 2:t])
        assert torch.equal(step[:, 0], full[:, t])
    # the pure function with an explicit pad-filled prefix equals the default
    cids = eng.compress[ids]
    pad = torch.full((2, 2), eng.pad_id)
    assert torch.equal(engram_addresses(cids, eng.orders, eng.multipliers, eng.moduli, eng.offsets,
                                        eng.pad_id, prefix=pad), full)


def test_short_conv_is_zero_initialised_so_y_equals_u():
    cfg, eng = _engram()
    assert torch.count_nonzero(eng.conv_weight) == 0
    u = torch.randn(2, 9, 1, cfg.dim)
    assert torch.count_nonzero(eng._short_conv(u)) == 0
    # survives the model's generic init
    model = build_model("baseline", **SMALL, **ENGRAM)
    assert torch.count_nonzero(model.layers[0].engram.conv_weight) == 0


@pytest.mark.parametrize("streams", [1, 3])
def test_engram_is_causal_with_trained_conv(streams):
    cfg, eng = _engram(hc_mult=streams)
    with torch.no_grad():
        eng.conv_weight.normal_(0, 0.5)  # non-zero conv: causality must come from the padding
        eng.table.weight.normal_(0, 1.0)
    T, t = 20, 11
    ids = torch.randint(0, cfg.vocab_size, (2, T))
    x = torch.randn(2, T, cfg.dim) if streams == 1 else torch.randn(2, T, streams, cfg.dim)
    y = eng(x, _ctx(ids))
    assert y.shape == x.shape
    ids2, x2 = ids.clone(), x.clone()
    ids2[:, t + 1:] = torch.randint(0, cfg.vocab_size, (2, T - t - 1))
    x2[:, t + 1:] = torch.randn_like(x2[:, t + 1:])
    y2 = eng(x2, _ctx(ids2))
    torch.testing.assert_close(y2[:, :t + 1], y[:, :t + 1])
    assert not torch.allclose(y2[:, t + 1:], y[:, t + 1:])
    # a token 8 positions back still reaches t through the dilated conv (receptive field 3*3+3)
    ids3 = ids.clone()
    ids3[:, t - 8] = (ids3[:, t - 8] + 1) % cfg.vocab_size
    assert not torch.allclose(eng(x, _ctx(ids3))[:, t], y[:, t])


def test_gate_per_branch_with_shared_value():
    cfg, eng = _engram(hc_mult=2)
    ids = torch.randint(0, cfg.vocab_size, (1, 6))
    x = 1e-3 * torch.randn(1, 6, 2, cfg.dim)  # small residual: y - x keeps full precision
    ctx = _ctx(ids)
    y = eng(x, ctx)  # zero conv: y - x = alpha_m * v, so the two branches differ only by a scale
    d = (y - x).double()
    ratio = d[:, :, 0] / d[:, :, 1]
    assert torch.allclose(ratio, ratio[..., :1].expand_as(ratio), rtol=1e-3, atol=1e-6)
    assert not torch.allclose(d[:, :, 0], d[:, :, 1])
    assert 0.0 < float(ctx.stats["engram_gate_l0"]) < 1.0


def test_model_with_engram_trains_and_tables_get_the_engram_group():
    torch.manual_seed(0)
    model = build_model("baseline", **SMALL, **ENGRAM)
    groups = model.optim_groups()
    assert sorted(n for n, _ in groups["engram"]) == ["layers.0.engram.table.weight",
                                                        "layers.1.engram.table.weight"]
    muon = {n for n, _ in groups["muon"]}
    assert "layers.0.engram.key_proj.weight" in muon and not any("table" in n for n in muon)
    assert all(p.dim() == 2 for _, p in groups["muon"])
    ids = torch.randint(0, 2048, (2, 16))
    loss, stats = model.loss(ids, ids)
    loss.backward()
    assert {"engram_gate_l0", "engram_gate_l1"} <= set(stats)
    table = model.layers[0].engram.table.weight
    used = torch.unique(model.layers[0].engram.addresses(ids))
    assert table.grad[used].abs().sum(-1).gt(0).all()
    mask = torch.ones(table.shape[0], dtype=torch.bool)
    mask[used] = False
    assert table.grad[mask].abs().sum() == 0  # only the addressed rows learn


def test_model_with_engram_and_moe_is_causal():
    torch.manual_seed(0)
    model = build_model("baseline", **SMALL, n_routed_experts=4, n_hash_layers=1, **ENGRAM).eval()
    with torch.no_grad():
        for layer in model.layers:
            layer.engram.conv_weight.normal_(0, 0.5)
    ids = torch.randint(0, 2048, (2, 40))
    ids2 = ids.clone()
    ids2[:, 25:] = torch.randint(0, 2048, (2, 15))
    torch.testing.assert_close(model(ids2)[:, :25], model(ids)[:, :25])
