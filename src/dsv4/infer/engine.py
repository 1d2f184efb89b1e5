"""The inference engine: chunked prefill, batched cached decode, speculative decoding.

    engine = Engine(model, tokenizer, max_batch=8)
    outs = engine.generate(["def f(", "import "], SamplingParams(max_tokens=32, temperature=0))
    for piece in engine.stream("def f(", SamplingParams(...)): print(piece, end="")

Continuous batching is built in: `submit` queues a request, every `step()` admits waiting
requests into free cache slots, runs one prefill chunk for each admitted prompt (bounded
memory for long prompts), then one batched decode step over all running sequences — rows
at different positions (a ragged batch: each row carries its own positions, no padding) —
and returns what each sequence produced. The server's scheduler calls `step()` in a loop;
`generate`/`stream` do the same in the caller's thread. The engine is not thread-safe.

A plain model (every V4 switch off) decodes through `plain_decode.PlainDecoder` (same math,
no module calls; `fast_decode=False` for the generic path, `weight_dtype=torch.bfloat16` for
bf16 GEMV weights with an fp32 residual stream and cache).

Speculative decoding (SPEC 1.5, 5): with `draft_fn` and `num_draft = k`, each decode step
feeds [last token, k drafts] in one forward, samples the k+1 verified positions in order
with the request's generator, keeps the drafts up to the first disagreement plus the
model's own token there (or a bonus token when all agree), and rolls the caches back.
Since every position is sampled from the model's own distribution with one draw per
emitted token, the output equals plain decoding's (exactly at temperature 0). `draft_fn(
engine, seqs, k) -> LongTensor [B, k]`; each `Sequence` offers `ids`, and, for a drafter with
`needs_streams = True` (the MTP head, `speculative.MTPDrafter`), the main model's residual
streams of the positions fed since its last call (`pending`).
"""

from __future__ import annotations

import contextlib
import itertools
from collections import deque
from dataclasses import dataclass, field

import torch

from dsv4.infer import plain_decode
from dsv4.infer.cache import ModelCache
from dsv4.infer.sampling import SamplingParams, make_generator, sample_token, token_logprobs
from dsv4.infer.text import TextStream
from dsv4.model.engram_prefetch import EngramPrefetcher
from dsv4.model.transformer import ForwardContext


@dataclass
class Sequence:
    """One request's state inside the engine."""

    id: int
    prompt: list[int]
    params: SamplingParams
    generator: torch.Generator
    stream: TextStream
    slot: int = -1
    n_cached: int = 0  # tokens whose K/V are in the cache (prompt first, then generated)
    generated: list[int] = field(default_factory=list)
    logprobs: list[dict] = field(default_factory=list)
    finish_reason: str | None = None
    stop_ids: frozenset = frozenset()  # token ids that end it (its stop_token_ids + eos unless ignored)
    # residual streams of fed positions not yet shown to the MTP drafter: [(start, [m, (n,) D])]
    pending: list = field(default_factory=list)
    # not yet reported by step()
    _new_ids: list[int] = field(default_factory=list)
    _new_logprobs: list[dict] = field(default_factory=list)

    @property
    def ids(self) -> list[int]:
        return self.prompt + self.generated

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class Delta:
    """What one sequence produced in one step (a streaming event)."""

    seq: Sequence
    text: str
    token_ids: list[int]
    logprobs: list[dict]
    finish_reason: str | None


@dataclass
class Output:
    text: str
    token_ids: list[int]
    logprobs: list[dict]
    finish_reason: str
    prompt_tokens: int


class Engine:
    def __init__(self, model, tokenizer=None, max_batch: int = 8, prefill_chunk: int = 256,
                 max_len: int | None = None, autocast: bool | str = "prefill",
                 draft_fn=None, num_draft: int = 0, compile: bool = False, fast_decode: bool = True,
                 weight_dtype: torch.dtype | None = None, prepack: bool = False):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_len = max_len or model.config.max_seq_len
        self.max_batch, self.prefill_chunk = max_batch, max(1, prefill_chunk)
        self.draft_fn, self.num_draft = draft_fn, num_draft if draft_fn else 0
        self.keep_streams = bool(getattr(draft_fn, "needs_streams", False))
        self._prefilling = False  # inside a prompt chunk (bf16 under autocast="prefill")
        self.device = next(model.parameters()).device
        # bf16 autocast: True (everything), False (fp32), or "prefill" (the default): bf16 for
        # prompt chunks, where matmuls are big enough for AMX's ~4x (SPEC 1.5), fp32 for the
        # one-token decode steps, where casts cost more than they save (benchmarks/decode.py).
        if autocast not in (True, False, "prefill"):
            raise ValueError(f"autocast must be True, False or 'prefill' (got {autocast!r})")
        self.autocast = autocast
        if compile:  # opt-in, process-wide: inductor for the decode steps' mHC coefficients
            from dsv4.model.indexer import set_score_compile  # and for the CSA index scores
            from dsv4.model.mhc import set_decode_compile
            set_decode_compile(True)
            set_score_compile(True)
        if prepack:  # opt-in: matmul weights stored [in, out] for faster GEMVs (infer/prepack.py)
            from dsv4.infer.prepack import prepack_weights
            prepack_weights(model)
        self.cache = ModelCache(model, max_batch, self.max_len, slack=self.num_draft + 1)
        # A plain model's one-token steps skip the module tree (plain_decode.py); weight_dtype
        # (e.g. torch.bfloat16) is the dtype of that path's Linear weights, bf16 under
        # autocast=True (its matmuls are bf16 there too; stream, norms and softmax stay fp32).
        fast = fast_decode and not draft_fn and plain_decode.supports(model)
        wdt = weight_dtype or (torch.bfloat16 if autocast is True else None)
        self.fast = plain_decode.PlainDecoder(model, self.cache, wdt) if fast else None
        if weight_dtype is not None and self.fast is None:
            raise ValueError("weight_dtype applies to the plain-model decode path only")
        self.prefetcher = EngramPrefetcher(model)  # issue 8: no layers (and no thread) for memory tables
        self.free_slots = list(range(max_batch - 1, -1, -1))
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self._ids = itertools.count()
        self.spec_stats = {"drafted": 0, "accepted": 0, "steps": 0}
        self.n_cancelled = 0
        eos = getattr(tokenizer, "eos_id", None)
        self.eos_ids = {eos} if eos is not None else set()

    # ---- requests ---------------------------------------------------------------------
    def encode(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            return list(self.tokenizer.encode(prompt, allow_special=True))
        return list(prompt)

    def submit(self, prompt: str | list[int], params: SamplingParams | None = None) -> Sequence:
        params = (params or SamplingParams()).validate()
        ids = self.encode(prompt)
        if not ids:
            raise ValueError("empty prompt")
        if len(ids) >= self.max_len:
            raise ValueError(f"prompt has {len(ids)} tokens; the context is {self.max_len}")
        stops = frozenset(params.stop_token_ids) | (set() if params.ignore_eos else self.eos_ids)
        seq = Sequence(next(self._ids), ids, params, make_generator(params.seed),
                       TextStream(self.tokenizer, params.stop), stop_ids=stops)
        self.waiting.append(seq)
        return seq

    def cancel(self, seq: Sequence) -> None:
        """Stop a request now and free its slot (a client went away)."""
        if seq in self.waiting:
            self.waiting.remove(seq)
        if not seq.finished:
            seq.finish_reason = "cancelled"
            self.n_cancelled += 1
        self._release(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # ---- the model ----------------------------------------------------------------------
    def _context(self, rows: list[int], ids: torch.Tensor, positions: torch.Tensor,
                 record: bool = True) -> ForwardContext:
        c = self.cache
        c.bind(torch.tensor(rows, dtype=torch.long), ids, positions, record=record)
        ids, positions = ids.to(self.device), positions.to(self.device)
        if positions.numel() == 1:  # one token: the rotations as views (same values, no gather)
            p = int(positions.reshape(-1)[0])
            rows_of = lambda table: table[p:p + 1].view(1, 1, -1)  # noqa: E731
        else:
            rows_of = lambda table: table[positions]  # noqa: E731
        ctx = ForwardContext(ids=ids, freqs=rows_of(c.freqs), cache=c, positions=positions)
        if c.freqs_compress is not None:
            ctx.freqs_compress = rows_of(c.freqs_compress)
        return ctx

    def _forward(self, rows: list[int], ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Cached forward of ids [B, T] at positions [B, T] in slots `rows`: the residual
        streams after the last block [B, T, (n,) D] (what the MTP head drafts from)."""
        ctx = self._context(rows, ids, positions)
        for layer in self.prefetcher.layers:  # host/mmap Engram rows gathered while layers before run
            self.prefetcher.stage_rows(layer, self.cache.engram[layer.layer_id].addresses(layer, ctx))
        with torch.inference_mode(), self._amp():
            return self.model._streams(ctx.ids, ctx)

    def mtp_logits(self, slot: int, streams: torch.Tensor, next_ids: torch.Tensor,
                   positions: torch.Tensor) -> torch.Tensor:
        """Cached MTP block (its attention has its own cache) over one slot's positions
        [1, m] given their main streams [1, m, (n,) D] and next tokens [1, m]: logits of
        the token after next at the last position [V]."""
        ctx = self._context([slot], next_ids, positions, record=False)
        m = self.model
        with torch.inference_mode(), self._amp():
            h = m.mtp(streams.to(self.device), ctx.ids, m.embed, ctx)
            return m.head(h[:, -1]).float().cpu()[0]

    def _logits(self, streams: torch.Tensor) -> torch.Tensor:
        """Logits (fp32, CPU) of residual streams [..., (n,) D]."""
        with torch.inference_mode(), self._amp():
            return self.model.head(self.model._final(streams)).float().cpu()

    def _amp(self):
        on = self.autocast is True or (self.autocast == "prefill" and self._prefilling)
        if not on:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    # ---- one step of continuous batching --------------------------------------------------
    @torch.inference_mode()  # once per step: no autograd bookkeeping for any tensor made in it
    def step(self) -> list[Delta]:
        while self.waiting and self.free_slots:
            seq = self.waiting.popleft()
            seq.slot = self.free_slots.pop()
            self.cache.truncate(seq.slot, 0)
            self.running.append(seq)
        decoding = [s for s in self.running if s.n_cached >= len(s.prompt) and not s.finished]
        for seq in [s for s in self.running if s.n_cached < len(s.prompt)]:
            self._prefill_chunk(seq)
        if decoding:
            if self.num_draft:
                self._speculative_step(decoding)
            else:
                self._decode_step(decoding)
        deltas = []
        for seq in list(self.running):
            if not (seq._new_ids or seq.finished):
                continue
            text = seq.stream.pop(final=seq.finished)
            deltas.append(Delta(seq, text, seq._new_ids, seq._new_logprobs, seq.finish_reason))
            seq._new_ids, seq._new_logprobs = [], []
            if seq.finished:
                self._release(seq)
        return deltas

    def _prefill_chunk(self, seq: Sequence) -> None:
        start = seq.n_cached
        chunk = seq.prompt[start:start + self.prefill_chunk]
        ids = torch.tensor([chunk], dtype=torch.long)
        pos = torch.arange(start, start + len(chunk)).unsqueeze(0)
        self._prefilling = True
        try:
            streams = self._forward([seq.slot], ids, pos)
            seq.n_cached += len(chunk)
            self._keep(seq, start, streams[0])
            if seq.n_cached == len(seq.prompt):  # the prompt is in: its last logits give token 1
                self._emit(seq, self._logits(streams[:, -1:])[0, 0])
        finally:
            self._prefilling = False

    def _decode_step(self, seqs: list[Sequence]) -> None:
        if self.fast is not None and self.fast.ready():
            ids = torch.tensor([s.generated[-1] for s in seqs], dtype=torch.long)
            logits = self.fast.decode([s.slot for s in seqs], ids, [s.n_cached for s in seqs])
            for b, seq in enumerate(seqs):
                seq.n_cached += 1
                self._emit(seq, logits[b])
            return
        ids = torch.tensor([[s.generated[-1]] for s in seqs], dtype=torch.long)
        pos = torch.tensor([[s.n_cached] for s in seqs], dtype=torch.long)
        streams = self._forward([s.slot for s in seqs], ids, pos)
        logits = self._logits(streams[:, -1:])[:, 0]
        for b, seq in enumerate(seqs):
            self._keep(seq, seq.n_cached, streams[b])
            seq.n_cached += 1
            self._emit(seq, logits[b])

    def _speculative_step(self, seqs: list[Sequence]) -> None:
        # Never write past the cache: shrink k near the end of the context.
        k = min(self.num_draft, min(self.max_len - 1 - s.n_cached for s in seqs))
        if k <= 0:
            return self._decode_step(seqs)
        drafts = torch.as_tensor(self.draft_fn(self, seqs, k), dtype=torch.long).view(len(seqs), k)
        last = torch.tensor([[s.generated[-1]] for s in seqs], dtype=torch.long)
        ids = torch.cat([last, drafts], dim=1)  # [B, k+1]
        pos = torch.tensor([s.n_cached for s in seqs]).unsqueeze(1) + torch.arange(k + 1)
        streams = self._forward([s.slot for s in seqs], ids, pos)
        logits = self._logits(streams)  # [B, k+1, V]
        self.spec_stats["steps"] += 1
        for b, seq in enumerate(seqs):
            n0 = seq.n_cached
            accepted = 0
            for i in range(k + 1):
                tok = self._emit(seq, logits[b, i])
                if seq.finished or i == k or tok != int(drafts[b, i]):
                    break
                accepted += 1
            self.spec_stats["drafted"] += k
            self.spec_stats["accepted"] += accepted
            # Fed: the last token + `accepted` drafts; the rest of the window is rolled back.
            seq.n_cached = n0 + 1 + accepted
            self._keep(seq, n0, streams[b, :accepted + 1])
            self.cache.truncate(seq.slot, seq.n_cached)

    def _keep(self, seq: Sequence, start: int, streams: torch.Tensor) -> None:
        if self.keep_streams:
            seq.pending.append((start, streams))

    def _emit(self, seq: Sequence, logits: torch.Tensor) -> int:
        """Sample one token for `seq` from logits [V], record it, decide whether it finished."""
        p = seq.params
        tok = sample_token(logits, p, seq.generator)
        if tok in seq.stop_ids:
            seq.finish_reason = "stop"
            return tok
        seq.generated.append(tok)
        seq._new_ids.append(tok)
        if p.logprobs is not None:
            lp = token_logprobs(logits, tok, p.logprobs)
            seq.logprobs.append(lp)
            seq._new_logprobs.append(lp)
        seq.stream.add(tok)
        if seq.stream.stopped:
            seq.finish_reason = "stop"
        elif len(seq.generated) >= p.max_tokens or len(seq.prompt) + len(seq.generated) >= self.max_len:
            seq.finish_reason = "length"
        return tok

    def _release(self, seq: Sequence) -> None:
        if seq in self.running:
            self.running.remove(seq)
        if seq.slot >= 0:
            self.cache.truncate(seq.slot, 0)
            self.free_slots.append(seq.slot)
            seq.slot = -1

    # ---- convenience: run to completion in this thread --------------------------------------
    def generate(self, prompts, params: SamplingParams | list[SamplingParams] | None = None) -> list[Output]:
        """Generate for every prompt (batched); outputs in the prompts' order."""
        single = isinstance(prompts, str) or (prompts and isinstance(prompts[0], int))
        prompts = [prompts] if single else list(prompts)
        plist = params if isinstance(params, list) else [params] * len(prompts)
        seqs = [self.submit(p, sp) for p, sp in zip(prompts, plist, strict=True)]
        while any(not s.finished for s in seqs):
            self.step()
        return [Output(s.stream.text if self.tokenizer else "", s.generated, s.logprobs,
                       s.finish_reason, len(s.prompt)) for s in seqs]

    def stream(self, prompt, params: SamplingParams | None = None):
        """Yield text pieces as they are generated; the final Output is the generator's return."""
        seq = self.submit(prompt, params)
        try:
            while not seq.finished:
                for d in self.step():
                    if d.seq is seq and d.text:
                        yield d.text
        finally:
            if not seq.finished:
                self.cancel(seq)
        return Output(seq.stream.text, seq.generated, seq.logprobs, seq.finish_reason, len(seq.prompt))
