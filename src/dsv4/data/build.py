"""`build_data`: corpus -> decontaminated documents -> tokenizer -> token shards.

Output directory layout (every file written atomically, `meta.json` last, so a directory
with a `meta.json` is complete):

    tokenizer.json   the Hugging Face tokenizer (see dsv4.data.tokenizer)
    train.bin        flat 1-D uint16 (uint32 if vocab > 65535) token ids: doc <eos> doc <eos> ...
    val.bin          same layout, the validation documents
    meta.json        counts and fingerprints (see `build_data`)

Split: a document goes to val iff sha1(its text) % 1000 < val_fraction * 1000. Depending
only on content, the split is stable when files move, are renamed or are added, and exact
duplicates (dropped anyway) could not straddle it. If that leaves val (or train) empty on a
tiny corpus, the document with the lowest (highest) hash moves over, still deterministic.
The tokenizer is trained on the train documents only.

Reuse: `build_key` hashes the file list with sizes and mtimes, the vocab size, the split
fraction and BUILD_VERSION; a rerun with the same key and an intact directory returns the
existing meta at once.
"""

from __future__ import annotations

import hashlib
import json
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from dsv4.data.atomic import atomic_open, atomic_write_text
from dsv4.data.decontam import N_GRAM, HumanEvalFilter
from dsv4.data.sources import (
    Document,
    ReadStats,
    default_sources,
    read_documents,
    resolve_sources,
    stat_fingerprint,
)
from dsv4.data.tokenizer import MIN_VOCAB, Tokenizer
from dsv4.errors import UserError

BUILD_VERSION = 2  # bump when the output format or meta changes: old dirs rebuild
ENCODE_BATCH_BYTES = 4 << 20  # text per encode_batch call: big enough for Rust threads to pay off


def _console():
    from rich.console import Console

    return Console(stderr=True)


@contextmanager
def _progress(enabled: bool):
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    console = _console()
    cols = [TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn()]
    # Bars only on a terminal: in logs and CI they would print blank lines.
    with Progress(*cols, console=console, disable=not (enabled and console.is_terminal), transient=True) as p:
        yield p


def _doc_hash(text: str) -> int:
    return int.from_bytes(hashlib.sha1(text.encode("utf-8", "replace")).digest()[:8], "big")


def split_documents(docs: list[Document], val_fraction: float) -> tuple[list[Document], list[Document]]:
    """Deterministic content-hash split (see the module docstring)."""
    cut = round(val_fraction * 1000)
    keyed = sorted(((_doc_hash(d.text) % 1000, _doc_hash(d.text), i) for i, d in enumerate(docs)))
    val_idx = {i for bucket, _, i in keyed if bucket < cut}
    if cut > 0 and not val_idx and len(docs) >= 2:
        val_idx.add(keyed[0][2])
    if len(val_idx) == len(docs) and docs:
        val_idx.discard(keyed[-1][2])
    train = [d for i, d in enumerate(docs) if i not in val_idx]
    val = [d for i, d in enumerate(docs) if i in val_idx]
    return train, val


def _write_tokens(path: Path, docs: list[Document], tok: Tokenizer, dtype, progress, label: str) -> int:
    """Encode docs in batches and stream `doc <eos> ...` to `path`; return the token count."""
    total_bytes = sum(len(d.text) for d in docs)
    task = progress.add_task(label, total=max(total_bytes, 1))
    n = 0
    eos = np.array([tok.eos_id], dtype=dtype)
    with atomic_open(path) as f:
        i = 0
        while i < len(docs):
            batch, size = [], 0
            while i < len(docs) and (not batch or size < ENCODE_BATCH_BYTES):
                batch.append(docs[i].text)
                size += len(docs[i].text)
                i += 1
            for ids in tok.encode_batch(batch):
                arr = np.asarray(ids, dtype=dtype)
                arr.tofile(f)
                eos.tofile(f)
                n += len(ids) + 1
            progress.advance(task, size)
    return n


def _build_key(files_fp: str, vocab_size: int, val_fraction: float) -> str:
    raw = json.dumps([BUILD_VERSION, N_GRAM, files_fp, vocab_size, val_fraction])
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def _try_reuse(out: Path, key: str) -> dict | None:
    from dsv4.data.dataset import DataDir

    if not (out / "meta.json").exists():
        return None
    try:
        data = DataDir.open(out)
    except UserError:
        return None
    return data.meta if data.meta.get("build_key") == key else None


def build_data(
    sources: list[str] | None,
    out_dir: str | Path,
    vocab_size: int = 8192,
    val_fraction: float = 0.05,
    progress: bool = True,
) -> dict:
    """Build (or reuse) the tokenizer and token shards in `out_dir`; return the meta dict.

    meta.json keys: vocab_size, dtype, n_train_tokens, n_val_tokens, train_bytes, val_bytes
    (UTF-8 bytes of the documents, for bits-per-byte), n_files, n_documents, n_train_docs,
    n_val_docs, n_skipped_non_utf8, n_skipped_unreadable, n_empty, n_duplicates, n_decontaminated,
    decontaminated (names), tokenizer_fingerprint, sources_fingerprint, build_key,
    val_fraction, sources, layout, build_seconds. The returned dict also has `reused`.
    """
    t0 = time.perf_counter()
    if not isinstance(vocab_size, int) or not MIN_VOCAB <= vocab_size < 2**32:
        raise UserError(f"--vocab-size must be an integer in [{MIN_VOCAB}, 2^32), got {vocab_size}")
    if not 0.0 <= val_fraction <= 0.5:
        raise UserError(f"--val-fraction must be in [0, 0.5], got {val_fraction}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"output {out} exists and is not a directory")
    console = _console()
    files = resolve_sources(sources)
    files_fp = stat_fingerprint(files)
    key = _build_key(files_fp, vocab_size, val_fraction)
    reused = _try_reuse(out, key)
    if reused is not None:
        if progress:
            console.print(f"[green]reusing[/] {out} (same {len(files)} files, vocab {vocab_size})")
        return {**reused, "reused": True}

    stats = ReadStats()
    decontam = HumanEvalFilter()
    docs: list[Document] = []
    seen: set[bytes] = set()
    dropped: list[str] = []
    n_dup = n_empty = 0
    with _progress(progress) as p:
        task = p.add_task(f"reading {len(files)} files", total=len(files))
        for sf in files:
            for d in read_documents(sf, stats):
                if not d.text.strip():
                    n_empty += 1
                    continue
                digest = hashlib.sha1(d.text.encode("utf-8", "replace")).digest()
                if digest in seen:
                    n_dup += 1
                    continue
                seen.add(digest)
                if decontam.is_contaminated(d.text):
                    dropped.append(d.name)
                    continue
                docs.append(d)
            p.advance(task)
    if not docs:
        raise UserError(
            f"empty corpus: {len(files)} files gave no usable documents "
            f"({stats.n_skipped_non_utf8} non-UTF-8, {len(dropped)} decontaminated); "
            "check --source"
        )
    train_docs, val_docs = split_documents(docs, val_fraction)

    with _progress(progress) as p:
        p.add_task(f"training tokenizer (vocab {vocab_size})", total=None)
        tok = Tokenizer.train((d.text for d in train_docs), vocab_size)
    dtype = np.uint16 if tok.vocab_size <= 65535 else np.uint32
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)  # incomplete until the new meta lands
    tok.save(out / "tokenizer.json")
    with _progress(progress) as p:
        n_train = _write_tokens(out / "train.bin", train_docs, tok, dtype, p, "encoding train")
        n_val = _write_tokens(out / "val.bin", val_docs, tok, dtype, p, "encoding val")

    meta = {
        "version": BUILD_VERSION,
        "vocab_size": tok.vocab_size,
        "dtype": np.dtype(dtype).name,
        "layout": "doc <|endoftext|> doc <|endoftext|> ...",
        "n_train_tokens": n_train,
        "n_val_tokens": n_val,
        "train_bytes": sum(len(d.text.encode("utf-8")) for d in train_docs),
        "val_bytes": sum(len(d.text.encode("utf-8")) for d in val_docs),
        "n_files": len(files),
        "n_documents": len(docs),
        "n_train_docs": len(train_docs),
        "n_val_docs": len(val_docs),
        "n_skipped_non_utf8": stats.n_skipped_non_utf8,
        "n_skipped_unreadable": stats.n_skipped_unreadable,
        "skipped": stats.skipped,
        "n_empty": n_empty,
        "n_duplicates": n_dup,
        "n_decontaminated": len(dropped),
        "decontaminated": dropped,
        "tokenizer_fingerprint": tok.fingerprint,
        "sources_fingerprint": files_fp,
        "build_key": key,
        "val_fraction": val_fraction,
        "sources": [str(s) for s in (sources if sources is not None else default_sources())],
        "build_seconds": round(time.perf_counter() - t0, 2),
    }
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=1) + "\n")
    return {**meta, "reused": False}
