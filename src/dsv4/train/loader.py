"""Deterministic, resumable batches of token windows from a 1-D token memmap.

The token stream (documents separated by eos) is cut into non-overlapping windows of
seq_len + 1 tokens (inputs and shifted targets). Each epoch visits every window once,
in an order fixed by (seed, epoch); a global batch is the next `batch_size` windows of
that order and rank r of a data-parallel group takes its contiguous slice of it. The
whole state is (epoch, pos): saved with a checkpoint, it makes a resumed run read
exactly the batches an uninterrupted run would have read.
"""

from __future__ import annotations

import numpy as np
import torch

from dsv4.errors import UserError


class TokenLoader:
    def __init__(
        self, tokens: np.ndarray, batch_size: int, seq_len: int, seed: int, rank: int = 0, world_size: int = 1
    ):
        if batch_size % world_size:
            raise UserError(f"--batch-size {batch_size} must be a multiple of the {world_size} ranks")
        self.tokens, self.seq_len, self.seed = tokens, seq_len, seed
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.n_windows = (len(tokens) - 1) // seq_len
        if self.n_windows < batch_size:
            raise UserError(
                f"the training split has {len(tokens)} tokens, too few for one batch of "
                f"{batch_size} x {seq_len}; add sources to the corpus or lower --batch-size/--seq-len"
            )
        self.epoch, self.pos = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n_windows)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets), each [batch_size / world_size, seq_len] int64."""
        if self.pos + self.batch_size > self.n_windows:  # drop the ragged tail of an epoch
            self.epoch, self.pos = self.epoch + 1, 0
            self._order = self._permutation(self.epoch)
        per_rank = self.batch_size // self.world_size
        start = self.pos + self.rank * per_rank
        windows = self._order[start : start + per_rank]
        self.pos += self.batch_size
        T = self.seq_len
        rows = np.stack([np.asarray(self.tokens[w * T : w * T + T + 1], dtype=np.int64) for w in windows])
        batch = torch.from_numpy(rows)
        return batch[:, :-1], batch[:, 1:]

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "pos": self.pos,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "seq_len": self.seq_len,
        }

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self._order = self._permutation(self.epoch)


def eval_batches(
    tokens: np.ndarray, seq_len: int, max_tokens: int, batch_size: int, rank: int = 0, world_size: int = 1
):
    """The fixed validation subset: the first `max_tokens` tokens of the split as windows,
    dealt round-robin to ranks, yielded as (inputs, targets) batches."""
    n = min((len(tokens) - 1) // seq_len, max(world_size, max_tokens // seq_len))
    n -= n % world_size  # equal shares: FSDP ranks must run the same number of forwards
    if n < 1:
        raise UserError(
            f"the validation split has {len(tokens)} tokens, too few for {world_size} window(s) of {seq_len}"
        )
    mine = list(range(rank, n, world_size))
    for i in range(0, len(mine), batch_size):
        rows = np.stack(
            [
                np.asarray(tokens[w * seq_len : w * seq_len + seq_len + 1], dtype=np.int64)
                for w in mine[i : i + batch_size]
            ]
        )
        batch = torch.from_numpy(rows)
        yield batch[:, :-1], batch[:, 1:]
