"""Inference: per-layer caches, sampling, the continuous-batching engine, speculative decoding.

- `cache`     KV caches by attention type (dense, sliding-window ring, compressed entries).
- `sampling`  `SamplingParams` and the seeded next-token sampler (the one sampler).
- `text`      incremental detokenisation with stop strings.
- `engine`    `Engine(model, tokenizer)`: prefill + batched decode, streaming, speculation.
- `load`      `load_engine(ckpt)`: a checkpoint's model + tokenizer in an engine.
- `sample`    the simple text-generation API of `dsv4 generate` / quickstart, over the engine.
"""
