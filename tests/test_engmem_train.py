"""Sparse row-wise training of Engram tables (issue 8): the same trajectory in every store,
Adam's math, only touched rows read/updated/resident, and the training-loop wiring."""

from __future__ import annotations

import torch

from dsv4.model.engram_prefetch import EngramPrefetcher
from dsv4.model.engram_store import MemoryStore
from dsv4.model.transformer import build_model
from dsv4.train.engram_optim import SparseRowAdam

KEY = "layers.1.engram.table.weight"
SHAPES = [(2, 32), (3, 17), (1, 64), (2, 32)]


def _batches(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 2048, (B, T + 1), generator=gen) for B, T in SHAPES]


def _train(model, batches, prefetch=False):
    """A few steps: AdamW for the dense weights, SparseRowAdam for the table (every store)."""
    dense = [p for n, p in model.named_parameters() if "table" not in n]
    opts = [torch.optim.AdamW(dense, lr=1e-3), SparseRowAdam(model, lr=5e-3, include_memory=True)]
    pf = EngramPrefetcher(model) if prefetch else None
    losses = []
    for i, b in enumerate(batches):
        x, y = b[:, :-1], b[:, 1:]
        if pf is not None and i + 1 < len(batches):
            pf.submit(batches[i + 1][:, :-1])  # gathered while this step runs
        loss, _ = model.loss(x, y)
        loss.backward()
        for o in opts:
            o.step()
            o.zero_grad(set_to_none=True)
        model.after_optimizer_step()
        losses.append(loss.item())
    if pf is not None:
        pf.close()
    return losses


def test_identical_training_trajectory_memory_host_mmap(tmp_path):
    torch.manual_seed(0)
    mem = build_model("tiny")
    host = build_model("tiny", engram_store="host")
    mm = build_model("tiny", engram_store="mmap", engram_path=str(tmp_path))
    sd = {k: v.clone() for k, v in mem.state_dict().items()}
    host.load_state_dict(sd)
    mm.load_state_dict(sd)
    batches = _batches()
    ref = _train(mem, batches)
    assert _train(host, batches) == ref
    assert _train(mm, batches, prefetch=True) == ref  # prefetched rows, shapes changing
    t0, t = sd[KEY], mem.state_dict()[KEY]
    assert torch.equal(host.state_dict()[KEY], t) and torch.equal(mm.state_dict()[KEY], t)
    # only rows some batch addressed moved
    eng = mem.layers[1].engram
    touched = torch.unique(torch.cat([eng.addresses(b[:, :-1]).flatten() for b in batches]))
    moved = torch.nonzero((t != t0).any(1)).squeeze(1)
    assert len(moved) > 0 and torch.isin(moved, touched).all()
    assert mm.layers[1].engram.table.counters["prefetch_hits"] == len(batches) - 1


def test_sparse_row_adam_equals_torch_adam_when_every_row_is_touched():
    torch.manual_seed(0)
    rows, dim = 12, 4
    store = MemoryStore(rows, dim, 0.02)
    ref = torch.nn.Parameter(store.weight.detach().clone())
    holder = torch.nn.ModuleDict({"table": store})
    opt = SparseRowAdam(holder, lr=1e-2, betas=(0.9, 0.95), include_memory=True)
    ref_opt = torch.optim.Adam([ref], lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    for _ in range(5):
        idx = torch.cat([torch.arange(rows), torch.randint(0, rows, (20,))]).view(4, 8)  # all rows, repeats
        target = torch.randn(4, 8, dim)
        (store(idx) - target).pow(2).sum().backward()
        torch.nn.functional.embedding(idx, ref).sub(target).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
        ref_opt.step()
        ref_opt.zero_grad()
    torch.testing.assert_close(store.weight, ref.detach(), rtol=1e-5, atol=1e-6)
    assert int(opt.state["table"]["n"].min()) == 5


def test_table_larger_than_ram_budget_trains_touching_only_its_rows(tmp_path):
    """A 33 MB table (+ 2 x 33 MB of Adam moments) under a 16 MB RAM budget: after a few
    steps from a cold page cache, only pages holding rows the batches addressed are in
    memory (mincore), and those pages plus the store's hot cache stay within the budget."""
    budget = 16 << 20
    model = build_model("tiny", engram_store="mmap", engram_path=str(tmp_path), engram_vocab_size=262_144)
    store = model.layers[1].engram.table
    table_bytes = store.rows * store.dim * 4
    assert 3 * table_bytes > 6 * budget
    store.set_cache_rows(4096)
    opt = SparseRowAdam(model, lr=1e-2)
    dense = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    files = [store.file] + store._state_files
    for f in files:
        f.drop_page_cache()
    assert all(f.resident_pages().sum() == 0 for f in files)
    batches = _batches(1)[:3]
    for b in batches:
        loss, _ = model.loss(b[:, :-1], b[:, 1:])
        loss.backward()
        opt.step()
        dense.step()
        opt.zero_grad()
        dense.zero_grad()
    eng = model.layers[1].engram
    touched = torch.unique(torch.cat([eng.addresses(b[:, :-1]).flatten() for b in batches]))
    resident_bytes = store.cache.nbytes
    for f in files:
        resident = set(map(int, f.resident_pages().nonzero()[0]))
        allowed = set(map(int, f.row_pages(touched)))
        assert resident and resident <= allowed, (f.path.name, len(resident - allowed))
        if f is store.file:
            assert len(resident) < 0.1 * f.data_pages
        resident_bytes += len(resident) * 4096
    assert resident_bytes < budget
    assert store.counters["rows_written"] == sum(
        len(torch.unique(eng.addresses(b[:, :-1]))) for b in batches)


def test_build_optimizers_adds_sparse_adam_for_host_and_mmap(tmp_path):
    from dsv4.train.config import TrainConfig
    from dsv4.train.optim import build_optimizers

    cfg = TrainConfig(preset="tiny", out_dir=str(tmp_path / "o"), data_dir=str(tmp_path / "d"))
    names = lambda m: [g["name"] for o in build_optimizers(m, cfg) for g in o.param_groups]  # noqa: E731
    assert "engram" in names(build_model("tiny")) and "engram_sparse" not in names(build_model("tiny"))
    got = names(build_model("tiny", engram_store="mmap", engram_path=str(tmp_path / "t")))
    assert "engram_sparse" in got and "engram" not in got
    opt = build_optimizers(build_model("tiny", engram_store="host"), cfg)[-1]
    assert isinstance(opt, SparseRowAdam) and opt.param_groups[0]["lr"] == cfg.lr * cfg.engram_lr_mult


def test_pretrain_with_mmap_tables_resumes_bit_exact(tmp_path):
    """The real training loop with engram_store=mmap (SparseRowAdam + next-batch prefetch):
    a run split by stop_at/resume ends with the weights, table and row-wise Adam state of a
    straight run; the table in the checkpoint equals the table file."""
    from safetensors.torch import load_file

    from dsv4.train.metrics import read_metrics
    from dsv4.train.pretrain import pretrain
    from helpers_train import build_small_data, tiny_config

    data = build_small_data(tmp_path / "data", vocab_size=300, files=_small_sources())

    def cfg(name, **kw):
        over = {"engram_store": "mmap", "engram_path": str(tmp_path / f"tables_{name}")}
        return tiny_config(tmp_path / name, data, max_steps=4, save_every=2, eval_every=0, batch_size=4,
                           seq_len=32, eval_tokens=256, overrides=over, **kw)

    straight = pretrain(cfg("a"))
    pretrain(cfg("b", stop_at=2))
    pretrain(cfg("b", resume=True))
    wa = load_file(str(tmp_path / "a" / "step-000004" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "step-000004" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    table = TableFileView(tmp_path / "tables_a" / "engram_l1.table")
    assert torch.equal(wa[KEY], table)
    sa = torch.load(tmp_path / "a" / "step-000004" / "train_state.pt", weights_only=True)
    sb = torch.load(tmp_path / "b" / "step-000004" / "train_state.pt", weights_only=True)
    ra, rb = sa["optimizers"][-1]["rows"], sb["optimizers"][-1]["rows"]
    assert all(torch.equal(ra[n][k], rb[n][k]) for n in ra for k in ra[n])
    assert int(ra["layers.1.engram.table"]["n"].max()) >= 1
    la = [r["loss"] for r in read_metrics(tmp_path / "a" / "metrics.jsonl") if "loss" in r]
    lb = [r["loss"] for r in read_metrics(tmp_path / "b" / "metrics.jsonl") if "loss" in r]
    assert la == lb and straight["step"] == 4


def _small_sources() -> list[str]:
    from helpers_train import corpus_sources

    return corpus_sources()[:3]


def TableFileView(path):  # noqa: N802 - reads a table file as a tensor, like the store does
    from dsv4.model.engram_tablefile import TableFile, read_header

    head = read_header(path)
    return TableFile(path, head["rows"], head["dim"], head["dtype"]).tensor.clone()


def _peak_anon_growth(fn) -> int:
    """Peak growth of this process's anonymous (non-file-backed) resident memory while `fn`
    runs, sampled every millisecond: pages of an mmap table file do not count, a copy does."""
    import threading
    import time

    def anon() -> int:
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no RssAnon in /proc/self/status")

    base, peak, done = anon(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], anon() - base)
            time.sleep(0.001)

    t = threading.Thread(target=sample)
    t.start()
    try:
        fn()
    finally:
        done.set()
        t.join()
    return max(peak[0], anon() - base)


def test_checkpointing_a_huge_mmap_table_never_copies_it_into_ram(tmp_path):
    """Save and resume a model whose mmap table (+ its row-wise Adam moments) is 64 MB each:
    weights and optimizer state stream to and from disk; no table-sized copy is ever made."""
    from dsv4.model.load import load_weights_into, read_weights
    from dsv4.train import checkpoint as ck

    def make(path):
        m = build_model("tiny", engram_store="mmap", engram_path=str(path), engram_vocab_size=524_288)
        return m, SparseRowAdam(m, lr=1e-2)

    model, opt = make(tmp_path / "a")
    store = model.layers[1].engram.table
    table_bytes = store.rows * store.dim * 4
    assert table_bytes >= 60 << 20
    b = _batches()[0]
    model.loss(b[:, :-1], b[:, 1:])[0].backward()
    opt.step()  # some rows and their moments now differ from the fresh state

    saved = {}

    def save():
        saved["dir"] = ck.save_checkpoint(tmp_path / "run", 1, model, [opt], {})

    grow = _peak_anon_growth(save)
    assert grow < table_bytes // 4, grow

    other, other_opt = make(tmp_path / "b")

    def resume():
        load_weights_into(other, read_weights(saved["dir"]), "test")
        ck.load_optimizers([other_opt], ck.read_train_state(saved["dir"])["optimizers"], saved["dir"])

    grow = _peak_anon_growth(resume)
    assert grow < table_bytes // 4, grow
    assert torch.equal(other.layers[1].engram.table.storage, store.storage)
    name = next(iter(opt.state))
    for k in ("m", "v", "n"):
        assert torch.equal(other_opt.state[name][k], opt.state[name][k])
    assert opt.state[name]["n"].sum() > 0
