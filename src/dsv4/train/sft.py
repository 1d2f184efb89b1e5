"""Supervised fine-tuning: chat-formatted code tasks, loss on the assistant's tokens only.

    sft(TrainConfig(out_dir=..., max_steps=...), init="runs/pretrain", tasks=...)

Examples are verifiable tasks with reference solutions (dsv4.tasks: generated train-split
problems, optionally with their `plan` as a `<think>` trace, plus mined doctest tasks),
rendered with the chat template (`Tokenizer.encode_chat(..., return_mask=True)`); the
targets are -100 everywhere except on the assistant's own tokens (its reasoning, answer
and closing `<|end|>`), so `model.loss` (cross-entropy with ignore_index) trains only the
answer. The training loop is pretraining's (`dsv4.train.pretrain.pretrain`: optimizers,
schedule, bf16, atomic checkpoints, bit-exact resume, val bits-per-byte on the corpus as a
forgetting check) with `SFTLoader` as its batch source and the pretrained checkpoint as init.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dsv4.errors import UserError

IGNORE = -100


def encode_examples(tokenizer, tasks: list, think: bool = True, system: str | None = None) -> list:
    """(ids, mask) per task: the prompt conversation + the reference answer, mask 1 on the answer."""
    from dsv4.tasks.render import chat_messages

    out = []
    for t in tasks:
        ids, mask = tokenizer.encode_chat(chat_messages(t, system, think), add_generation_prompt=False,
                                          return_mask=True)
        out.append((list(ids), list(mask)))
    return out


class SFTLoader:
    """Deterministic, resumable packed batches of chat examples.

    Each epoch shuffles the examples (seed, epoch) and packs whole examples greedily into
    rows of seq_len + 1 tokens (padded with pad, masked out), so that every answer sees its
    whole prompt; an example longer than a row is dropped (it would lose its answer or its
    question). State (epoch, pos) like the token loader's: a resumed run reads the same rows.
    """

    def __init__(self, examples: list, batch_size: int, seq_len: int, seed: int, pad_id: int,
                 rank: int = 0, world_size: int = 1):
        if batch_size % world_size:
            raise UserError(f"--batch-size {batch_size} must be a multiple of the {world_size} ranks")
        self.examples = [e for e in examples if len(e[0]) <= seq_len + 1 and any(e[1][1:])]
        self.n_dropped = len(examples) - len(self.examples)
        if not self.examples:
            raise UserError(f"no SFT example fits in {seq_len + 1} tokens; raise --seq-len")
        self.batch_size, self.seq_len, self.seed, self.pad = batch_size, seq_len, seed, pad_id
        self.rank, self.world_size = rank, world_size
        self.epoch, self.pos = 0, 0
        self._rows = self._pack(0)

    def _pack(self, epoch: int) -> list[tuple[list[int], list[int]]]:
        order = np.random.default_rng([self.seed, epoch, 17]).permutation(len(self.examples))
        rows, ids, mask = [], [], []
        for i in order:
            e_ids, e_mask = self.examples[i]
            if len(ids) + len(e_ids) > self.seq_len + 1:
                rows.append((ids, mask))
                ids, mask = [], []
            ids, mask = ids + e_ids, mask + e_mask
        rows.append((ids, mask))
        while len(rows) < self.batch_size:  # a tiny example set still fills one batch per epoch
            rows = rows + rows
        return rows

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) [batch_size / world_size, seq_len]; targets -100 off the answers."""
        if self.pos + self.batch_size > len(self._rows):
            self.epoch, self.pos = self.epoch + 1, 0
            self._rows = self._pack(self.epoch)
        per_rank = self.batch_size // self.world_size
        start = self.pos + self.rank * per_rank
        chunk = self._rows[start:start + per_rank]
        self.pos += self.batch_size
        T1 = self.seq_len + 1
        ids = torch.full((len(chunk), T1), self.pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), T1), dtype=torch.bool)
        for r, (i, m) in enumerate(chunk):
            ids[r, :len(i)] = torch.tensor(i)
            mask[r, :len(m)] = torch.tensor(m, dtype=torch.bool)
        targets = ids[:, 1:].masked_fill(~mask[:, 1:], IGNORE)
        return ids[:, :-1], targets

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "seed": self.seed, "n_examples": len(self.examples)}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self._rows = self._pack(self.epoch)


def sft_tasks(source: str = "tasks", n: int = 2000, seed: int = 0, mine_from: list | None = None,
              difficulty: tuple[int, int] | None = None, families: list | None = None,
              unique: bool = True, part: str | None = None) -> list:
    """The SFT task set: `tasks` = generated train-split tasks (+ doctests mined from
    `mine_from`, train split only; `families` restricts the generator; `unique=False` lets
    instances repeat, so that every family keeps its share of the set however small its
    instance space; `part="sft"` keeps SFT's half of the train split, leaving RL's half unseen),
    or a JSONL file of tasks (`dsv4 tasks ... --json`)."""
    from dsv4.tasks import generate_tasks, load_tasks

    if source != "tasks":
        if not Path(source).is_file():
            raise UserError(f"--data {source!r}: use `tasks` or a JSONL file of tasks")
        return [t for t in load_tasks(source) if t.split == "train"]
    tasks = generate_tasks("train", n=n, seed=seed, difficulty=difficulty, families=families, unique=unique,
                           part=part)
    if mine_from:
        from dsv4.tasks.mine import mine_doctests

        tasks += [t for t in mine_doctests(mine_from) if t.split == "train"]
    return tasks


def open_init(init: str | Path):
    """(checkpoint dir, its tokenizer, its recorded data dir or None) of an --init checkpoint."""
    from dsv4.infer.load import load_tokenizer
    from dsv4.model.load import resolve_checkpoint
    from dsv4.train import checkpoint as ck

    path = resolve_checkpoint(init)
    data_dir = None
    if (path / ck.TRAIN_STATE).exists():
        data_dir = ck.read_train_state(path).get("data_dir")
    return path, load_tokenizer(path), data_dir


def open_corpus(given: str, recorded: str | None, fingerprint: str, missing: str):
    """(path, DataDir) of the corpus: `given` if it is a data dir, else the one the init
    checkpoint `recorded`; its tokenizer must be `fingerprint`. UserError(`missing`) if neither."""
    from dsv4.train.pretrain import open_data

    src = given if Path(given, "meta.json").exists() else recorded
    if not src or not Path(src, "meta.json").exists():
        raise UserError(missing)
    return src, open_data(src, expected_fingerprint=fingerprint, build_if_missing=False)


def sft(cfg, init: str | Path, tasks: list | None = None, data=None, think: bool = True) -> dict:
    """Fine-tune the `init` checkpoint on `tasks` (default: `sft_tasks()`) with the pretraining
    loop; `data` (a DataDir with the same tokenizer) supplies the validation bits-per-byte."""
    from dsv4.train.pretrain import pretrain

    path, tok, data_dir = open_init(init)
    if data is None:
        need = f"no data dir for validation: pass --data-dir (the corpus {init} was trained on)"
        data = open_corpus(cfg.data_dir, data_dir, tok.fingerprint, need)[1]
    if data.tokenizer.fingerprint != tok.fingerprint:
        raise UserError(f"the data dir's tokenizer differs from the checkpoint's ({path})")
    examples = encode_examples(tok, tasks if tasks is not None else sft_tasks(), think=think)

    def batches(seq_len, seed, rank, world_size):
        return SFTLoader(examples, cfg.batch_size, seq_len, seed, tok.pad_id, rank, world_size)

    return pretrain(cfg, data=data, init=path, batches=batches)
