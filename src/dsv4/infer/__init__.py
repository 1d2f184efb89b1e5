"""Inference: caches, sampling, the continuous-batching engine, speculative decoding.

- `cache`        building blocks (dense store, ring buffer, compressed entries + compressor
                 state), `ModelCache` (what `ctx.cache` is), `cache_bytes` (KV bytes/token).
- `attn_cache`   cached attention for every attention type (plain, window, CSA + indexer, HCA).
- `engram_cache` incremental Engram: N-gram hash prefix and the short conv's state.
- `sampling`     `SamplingParams` and the seeded next-token sampler (the one sampler).
- `text`         incremental detokenisation with stop strings.
- `engine`       `Engine(model, tokenizer)`: chunked prefill + batched ragged decode, streaming,
                 logprobs, the speculative verify loop.
- `plain_decode` the one-token decode step of a plain model (every V4 switch off) as straight
                 tensor code (fused GEMVs, in-place KV writes); optional bf16 weights.
- `speculative`  `MTPDrafter`: the MTP head drafts for self-speculative decoding.
- `load`         `load_engine(ckpt)`: a checkpoint's model + tokenizer in an engine.
- `chat`         `ChatSession`: multi-turn chat over the engine (`dsv4 chat`).
- `sample`       the simple text-generation API of `dsv4 generate` / quickstart, over the engine.
"""
