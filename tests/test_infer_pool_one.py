"""`attn_decode.pool_one` (one completed compressor block, host-int block index) gives the bits of
`AttentionCache._pool` for CSA (overlapping spans, block 0 with no predecessor) and HCA blocks,
and the comparison catches a planted slip."""

import torch

from dsv4.infer.attn_decode import pool_one
from dsv4.infer.cache import ModelCache
from dsv4.model.transformer import build_model


def _caches():
    torch.manual_seed(0)
    model = build_model("tiny", max_seq_len=256).eval()
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "ape"):
                m.ape.normal_()
    mc = ModelCache(model, slots=1, max_len=256)
    return [c for c in mc.layers.values() if c.cmp is not None]


@torch.no_grad()
def test_pool_one_equals_general_pool():
    caches = _caches()
    comps = [(c, c.attn.compressor) for c in caches]
    comps += [(c, c.attn.indexer.compressor) for c in caches if c.attn.indexer is not None]
    assert {comp.overlap for _, comp in comps} == {True, False}  # CSA and HCA blocks both
    for cache, comp in comps:
        coff, r = 2 if comp.overlap else 1, comp.ratio
        span = (2 if comp.overlap else 1) * r
        for block in (0, 1, 5):
            kv, score = torch.randn(span, coff * comp.head_dim), torch.randn(span, coff * comp.head_dim) * 3
            if comp.overlap and block == 0:  # the span reaches before position 0: zeros there
                kv[:r], score[:r] = 0, 0
            blocks = torch.tensor([block])
            want = cache._pool(comp, blocks, kv.unsqueeze(0), score.unsqueeze(0))[0]
            got = pool_one(cache, comp, block, kv, score)
            assert torch.equal(got, want), (comp.overlap, block)
            # a planted slip (scores off by 2^-20 relative) is caught by the same comparison
            if block:
                bad = pool_one(cache, comp, block, kv, score * (1 + 2 ** -20))
                assert not torch.equal(bad, want)
