"""Data: the code corpus, the byte-level BPE tokenizer, token shards and decontamination.

- `specials`  the special tokens (ids 0..14) shared by pretraining, SFT, serving and LIC.
- `tokenizer` `Tokenizer`: byte-level BPE over Hugging Face `tokenizers`.
- `chat`      the chat template (`render_chat`, `encode_chat` segments, `parse_assistant`).
- `sources`   turning `--source` arguments (dirs, globs, JSONL) into documents.
- `decontam`  13-gram HumanEval decontamination.
- `build`     `build_data(...)`: corpus -> tokenizer + `train.bin`/`val.bin` + `meta.json`.
- `dataset`   `DataDir.open(path)`: the validated, memory-mapped result.

Importing this package is cheap; nothing here imports torch.
"""
