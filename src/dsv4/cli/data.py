"""`dsv4 data ...`: build the corpus, tokenizer and token shards; inspect a data dir."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="corpus, tokenizer and token shards")
    p.set_defaults(_parser=p)
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION")
    b = dsub.add_parser(
        "build",
        help="build tokenizer + train/val token shards (default corpus: the Python stdlib)",
        description="Tokenize a code corpus into DIR: tokenizer.json, train.bin, val.bin, meta.json. "
        "Reruns on unchanged inputs reuse the result.",
    )
    b.add_argument(
        "--source",
        action="append",
        metavar="PATH",
        help="directory (*.py, recursive), glob, .jsonl file ('text'/'content' per line) or file; "
        "repeatable (default: this interpreter's standard library)",
    )
    b.add_argument("--out", default="runs/data", metavar="DIR", help="output directory (default: runs/data)")
    b.add_argument("--vocab-size", type=int, default=8192, metavar="N", help="BPE vocabulary size (8192)")
    b.add_argument("--val-fraction", type=float, default=0.05, metavar="F", help="validation share (0.05)")
    b.add_argument("--no-progress", action="store_true", help="no progress bars")
    b.set_defaults(func=_build)
    i = dsub.add_parser("info", help="summarise a built data dir")
    i.add_argument("dir", nargs="?", default="runs/data", help="data dir (default: runs/data)")
    i.set_defaults(func=_info)


def _summary(meta: dict) -> str:
    return (
        f"files {meta['n_files']} (documents {meta['n_documents']}, skipped non-UTF-8 "
        f"{meta['n_skipped_non_utf8']}, unreadable {meta.get('n_skipped_unreadable', 0)}, duplicates "
        f"{meta.get('n_duplicates', 0)}, empty {meta.get('n_empty', 0)}, "
        f"decontaminated {meta['n_decontaminated']})\n"
        f"tokens train {meta['n_train_tokens']:,} / val {meta['n_val_tokens']:,} "
        f"({meta['val_bytes'] / max(meta['n_val_tokens'], 1):.2f} bytes/token on val), "
        f"vocab {meta['vocab_size']}, {meta['dtype']}, tokenizer {meta['tokenizer_fingerprint']}"
    )


def _build(args: argparse.Namespace) -> int:
    import time

    from dsv4.data.build import build_data

    t0 = time.perf_counter()
    meta = build_data(
        args.source,
        args.out,
        vocab_size=args.vocab_size,
        val_fraction=args.val_fraction,
        progress=not args.no_progress,
    )
    verb = "reused" if meta.get("reused") else "built"
    print(f"{verb} {args.out} in {time.perf_counter() - t0:.1f}s")
    print(_summary(meta))
    return 0


def _info(args: argparse.Namespace) -> int:
    from dsv4.data.dataset import DataDir

    data = DataDir.open(args.dir)
    print(f"{data.path}: built in {data.meta.get('build_seconds', '?')}s from {data.meta.get('sources')}")
    print(_summary(data.meta))
    return 0
