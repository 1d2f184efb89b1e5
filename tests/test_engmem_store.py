"""Engram table stores (issue 8): identical outputs across memory/host/mmap, exact state_dict
round trips without whole-table copies, validated table files, the hot-row cache."""

from __future__ import annotations

import struct

import pytest
import torch

from dsv4.config import make_config
from dsv4.errors import UserError
from dsv4.model.engram_store import HostStore, MemoryStore, MmapStore, engram_memory_stats
from dsv4.model.engram_tablefile import HEADER_BYTES, TableFile, read_header
from dsv4.model.transformer import build_model

KEY = "layers.1.engram.table.weight"


def _three(tmp_path, **kw):
    torch.manual_seed(0)
    mem = build_model("tiny", **kw)
    host = build_model("tiny", engram_store="host", **kw)
    mm = build_model("tiny", engram_store="mmap", engram_path=str(tmp_path / "tables"), **kw)
    sd = mem.state_dict()
    host.load_state_dict(sd)
    mm.load_state_dict(sd)
    return mem, host, mm


def test_config_fields_validated():
    assert make_config("tiny").engram_store == "memory"
    with pytest.raises(UserError, match="engram_store must be"):
        make_config("tiny", engram_store="disk")
    with pytest.raises(UserError, match="needs engram_path"):
        make_config("tiny", engram_store="mmap")


def test_store_kinds_and_parameters(tmp_path):
    mem, host, mm = _three(tmp_path)
    assert isinstance(mem.layers[1].engram.table, MemoryStore)
    assert isinstance(host.layers[1].engram.table, HostStore)
    assert isinstance(mm.layers[1].engram.table, MmapStore)
    assert (tmp_path / "tables" / "engram_l1.table").exists()
    # host/mmap tables are not parameters: no dense optimizer ever sees them
    assert [n for n, _ in mem.optim_groups()["engram"]] == [KEY]
    assert host.optim_groups()["engram"] == [] and mm.optim_groups()["engram"] == []


def test_identical_logits_memory_host_mmap(tmp_path):
    mem, host, mm = _three(tmp_path)
    for B, T in ((2, 40), (1, 7), (3, 64)):
        ids = torch.randint(0, 2048, (B, T))
        with torch.no_grad():
            ref = mem(ids)
            assert torch.equal(ref, host(ids))
            assert torch.equal(ref, mm(ids))
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(mem(ids), mm(ids))


def test_state_dict_roundtrip_between_stores_is_exact_and_zero_copy(tmp_path):
    mem, host, mm = _three(tmp_path)
    with torch.no_grad():
        mm.layers[1].engram.table.write(torch.tensor([3, 5]), torch.full((2, 8), 7.0))  # make mmap differ
    sd = mm.state_dict()
    t = sd[KEY]
    store = mm.layers[1].engram.table
    # the checkpoint tensor is a view of the mapped file, not a copy in RAM
    assert t.data_ptr() == store.file.tensor.data_ptr()
    assert t.untyped_storage().nbytes() == store.rows * store.dim * 4
    host.load_state_dict(sd)
    mem.load_state_dict(host.state_dict())
    mm2 = build_model("tiny", engram_store="mmap", engram_path=str(tmp_path / "other"))
    mm2.load_state_dict(mem.state_dict())
    for m in (host, mem, mm2):
        assert torch.equal(m.state_dict()[KEY], t)
    assert torch.equal(mem.state_dict()[KEY][3], torch.full((8,), 7.0))
    # the file persists: a new model on the same path opens it with the loaded rows
    mm3 = build_model("tiny", engram_store="mmap", engram_path=str(tmp_path / "other"))
    assert torch.equal(mm3.layers[1].engram.table.weight, t)
    with pytest.raises(RuntimeError, match="size mismatch"):
        bad = dict(sd)
        bad[KEY] = torch.zeros(3, 8)
        mm2.load_state_dict(bad)


def test_fresh_host_and_mmap_tables_start_equal(tmp_path):
    host = build_model("tiny", engram_store="host")
    mm = build_model("tiny", engram_store="mmap", engram_path=str(tmp_path))
    a, b = host.layers[1].engram.table.weight, mm.layers[1].engram.table.weight
    assert torch.equal(a, b) and 0.015 < a.std() < 0.025


def _table_file(tmp_path):
    build_model("tiny", engram_store="mmap", engram_path=str(tmp_path))
    return tmp_path / "engram_l1.table"


def _reopen(tmp_path):
    return build_model("tiny", engram_store="mmap", engram_path=str(tmp_path))


def test_truncated_table_file_is_a_clear_error(tmp_path):
    path = _table_file(tmp_path)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - 100)
    with pytest.raises(UserError, match="is truncated"):
        _reopen(tmp_path)
    with open(path, "r+b") as f:
        f.truncate(20)
    with pytest.raises(UserError, match="truncated: 20 bytes"):
        _reopen(tmp_path)


def test_corrupt_table_header_is_a_clear_error(tmp_path):
    path = _table_file(tmp_path)
    raw = bytearray(path.read_bytes()[:64])
    raw[20] ^= 0xFF  # inside the rows field: the checksum no longer matches
    with open(path, "r+b") as f:
        f.write(raw)
    with pytest.raises(UserError, match="corrupt header"):
        _reopen(tmp_path)
    with open(path, "r+b") as f:
        f.write(b"NOTATABL")
    with pytest.raises(UserError, match="not a dsv4 Engram table"):
        _reopen(tmp_path)


def test_incomplete_or_mismatched_table_file_is_a_clear_error(tmp_path):
    f = TableFile(tmp_path / "x.table", 10, 4)  # never marked complete (creation "crashed")
    del f
    with pytest.raises(UserError, match="incomplete"):
        read_header(tmp_path / "x.table")
    _table_file(tmp_path)
    with pytest.raises(UserError, match="expects"):  # same path, a differently sized table
        build_model("tiny", engram_store="mmap", engram_path=str(tmp_path), engram_vocab_size=300)
    head = read_header(tmp_path / "engram_l1.table")
    assert head["size"] == HEADER_BYTES + head["rows"] * head["dim"] * 4
    assert struct.unpack("<I", (tmp_path / "engram_l1.table").read_bytes()[8:12])[0] == 1


def test_hot_cache_zipfian_hit_rate_and_write_through(tmp_path):
    store = MmapStore(tmp_path / "z.table", 50_000, 8, 0.02, seed=1, cache_rows=2_000)
    gen = torch.Generator().manual_seed(0)
    ranks = torch.arange(1, store.rows + 1, dtype=torch.float64)
    zipf = ranks.pow(-1.1)
    perm = torch.randperm(store.rows, generator=gen)  # hot rows scattered over the table
    for step in range(60):
        draw = perm[torch.multinomial(zipf, 512, replacement=True, generator=gen)]
        u = torch.unique(draw)
        got = store.read(u)
        assert torch.equal(got, store.storage[u])  # the cache never changes what is read
        if step % 10 == 0:  # updates must reach cached copies
            store.write(u[:50], got[:50] + 1.0)
            assert torch.equal(store.read(u[:50]), store.storage[u[:50]])
    rate = store.cache.hit_rate
    assert rate > 0.5, rate  # 4% of the rows serve most lookups (Zipf)
    stats = engram_memory_stats(torch.nn.ModuleDict({"t": store}))
    assert stats["engram_cache_hit_rate"] == rate
    assert stats["engram_rows_from_tier"] < stats["engram_rows_read"]


def test_a_model_with_engram_stores_deepcopies():
    """RL deep-copies the policy as its frozen reference: the store's lock must not block that."""
    import copy

    from dsv4.model import build_model

    torch.manual_seed(0)
    model = build_model("tiny").eval()
    ref = copy.deepcopy(model)
    ids = torch.randint(0, model.config.vocab_size, (1, 24))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), ref(ids), rtol=0, atol=0)
    ref.layers[1].engram.table.read(torch.tensor([0, 1]))  # the copy has a working lock
