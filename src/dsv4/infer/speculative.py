"""Drafters for self-speculative decoding (SPEC 1.5, 5); the verify loop is `Engine`'s.

`MTPDrafter`: V4's multi-token-prediction block proposes the token after next. At position
t it combines the main model's residual streams h_t with the embedding of x_{t+1} and
predicts x_{t+2}, so after a decode step that produced token x_{n+1} at position n, the
MTP block at position n (streams h_n, next token x_{n+1}) drafts x_{n+2}. The MTP block
has its own attention, whose cache must hold every earlier position: the drafter feeds it
all positions the main model accepted since its last call (the engine keeps their streams
for it), so the MTP cache only ever receives accepted positions and never rolls back.

    engine = Engine(model, tok, draft_fn=MTPDrafter(), num_draft=1)

One MTP block drafts one token (num_draft = 1). The draft is the MTP head's argmax;
verification samples every position from the main model, so outputs equal plain decoding.
"""

from __future__ import annotations

import torch


class MTPDrafter:
    needs_streams = True  # the engine keeps the main model's streams of fed positions for us

    def __init__(self):
        self.drafted = 0

    def __call__(self, engine, seqs, k: int) -> torch.Tensor:
        if engine.model.mtp is None:
            raise ValueError("MTP drafting needs a model with an MTP block (n_mtp_layers = 1)")
        if k != 1:
            raise ValueError("one MTP block drafts one token: use num_draft=1")
        drafts = []
        for seq in seqs:
            start = seq.pending[0][0]
            streams = torch.cat([s for _, s in seq.pending], dim=0).unsqueeze(0)  # [1, m, (n,) D]
            seq.pending.clear()
            m = streams.shape[1]
            ids = seq.ids
            next_ids = torch.tensor([ids[start + 1:start + 1 + m]], dtype=torch.long)
            positions = torch.arange(start, start + m).unsqueeze(0)
            logits = engine.mtp_logits(seq.slot, streams, next_ids, positions)
            drafts.append([int(logits.argmax())])
        self.drafted += len(seqs)
        return torch.tensor(drafts, dtype=torch.long)
