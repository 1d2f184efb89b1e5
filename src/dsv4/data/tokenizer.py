"""Byte-level BPE tokenizer for code, wrapping Hugging Face `tokenizers`.

Why byte-level: every string (any Unicode, control characters, emoji) maps to bytes, and
all 256 bytes are in the base vocabulary, so `decode(encode(s)) == s` always holds and no
input is ever "unknown". Text is first split with a GPT-4-style regex (letters, 1-3 digit
groups, punctuation runs, newline runs, indentation) so merges never cross those bounds.

The 15 special tokens of `dsv4.data.specials` get ids 0..14. With `allow_special=False`
(the default, for corpus text and anything a user typed) a special-token string inside the
text, e.g. "<|endoftext|>" in a Python file, is encoded as ordinary bytes: because the
pre-tokenizer always cuts between letters and ">"/"|", no learned token can equal a
special string, so the two readings never collide. `allow_special=True` is for text we
rendered ourselves, such as `render_chat` output.

The chat template (`render_chat`) is documented in `dsv4.data.chat`; `encode_chat` is the
injection-safe way to tokenize a conversation and get the SFT loss mask.

Strings that are not valid Unicode (lone surrogates, which JSON can smuggle in) cannot be
UTF-8 encoded; they are encoded with U+FFFD in place of each lone surrogate.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path

from dsv4.data.chat import chat_segments, render_chat  # noqa: F401  (re-exported API)
from dsv4.data.specials import EOS, PAD, SPECIAL_TOKENS
from dsv4.errors import UserError

# GPT-4-style split: contractions, optional leading non-letter + letters, 1-3 digits,
# punctuation runs (with trailing newlines), newline runs, and runs of spaces that leave
# the last space to the next word (so "    return" keeps " return" as a unit).
SPLIT_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
MIN_VOCAB = 256 + len(SPECIAL_TOKENS)


def _byte_decoder() -> dict[str, int]:
    """Inverse of the GPT-2 byte-to-printable-character map used by ByteLevel.

    Printable Latin-1 bytes map to themselves; the other 68 bytes map, in byte order, to
    the code points 256, 257, ... so that every byte has a visible, non-space character.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table


def _clean_surrogates(text: str) -> str:
    """Replace lone surrogates (not encodable as UTF-8) with U+FFFD; a no-op for valid text."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)


class Tokenizer:
    """A trained dsv4 tokenizer. Build with `train` or `load`; never construct directly."""

    def __init__(self, json_str: str, source: str = "<memory>"):
        from tokenizers import Tokenizer as HFTokenizer

        try:
            special = HFTokenizer.from_str(json_str)
            plain = HFTokenizer.from_str(json_str)
        except Exception as e:  # the Rust side raises its own exception types
            raise UserError(f"{source}: not a valid tokenizer file ({str(e)[:120]})") from None
        added = special.get_added_tokens_decoder()  # id -> AddedToken
        for i, tok in enumerate(SPECIAL_TOKENS):
            if i not in added or added[i].content != tok or special.token_to_id(tok) != i:
                raise UserError(
                    f"{source}: not a dsv4 tokenizer (special token {tok} should have id {i}); "
                    "rebuild it with `dsv4 data build`"
                )
        plain.encode_special_tokens = True  # special strings in text -> ordinary bytes
        self._special, self._plain = special, plain
        self._json = json_str

    # -- building -------------------------------------------------------------------------

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> Tokenizer:
        """Train a byte-level BPE with `vocab_size` entries (specials and 256 bytes included)."""
        from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
        from tokenizers import Tokenizer as HFTokenizer

        if not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB:
            raise UserError(f"vocab size must be an integer >= {MIN_VOCAB} (256 bytes + specials)")
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        hf.train_from_iterator((_clean_surrogates(t) for t in texts), trainer)
        return cls(hf.to_str())

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UserError(f"tokenizer file {path} not found; build one with `dsv4 data build`") from None
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read tokenizer file {path}: {e}") from None
        return cls(text, source=str(path))

    def save(self, path: str | Path) -> None:
        from dsv4.data.atomic import atomic_write_text

        atomic_write_text(path, self._json)

    def to_str(self) -> str:
        return self._json

    # -- identity -------------------------------------------------------------------------

    @cached_property
    def fingerprint(self) -> str:
        """Stable hash of the tokenizer's content (canonical JSON), 16 hex digits."""
        canon = json.dumps(json.loads(self._json), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(canon.encode("utf-8")).hexdigest()[:16]

    @property
    def vocab_size(self) -> int:
        return self._special.get_vocab_size(with_added_tokens=True)

    @property
    def eos_id(self) -> int:
        return SPECIAL_TOKENS.index(EOS)

    @property
    def pad_id(self) -> int:
        return SPECIAL_TOKENS.index(PAD)

    def token_id(self, special: str) -> int:
        if special not in SPECIAL_TOKENS:
            raise KeyError(f"{special!r} is not a special token; known: {SPECIAL_TOKENS}")
        return SPECIAL_TOKENS.index(special)

    # -- encoding -------------------------------------------------------------------------

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        tok = self._special if allow_special else self._plain
        return tok.encode(_clean_surrogates(text), add_special_tokens=False).ids

    def encode_batch(self, texts: list[str], allow_special: bool = False) -> list[list[int]]:
        """Encode many texts in parallel (Rust threads); much faster than a Python loop."""
        tok = self._special if allow_special else self._plain
        texts = [_clean_surrogates(t) for t in texts]
        fast = getattr(tok, "encode_batch_fast", tok.encode_batch)  # no offsets: ~2x faster
        return [e.ids for e in fast(texts, add_special_tokens=False)]

    def encode_chat(
        self, messages: list[dict], add_generation_prompt: bool = True, return_mask: bool = False
    ) -> list[int] | tuple[list[int], list[int]]:
        """Encode a conversation: template markers as specials, contents as plain text.

        With `return_mask`, also return a 0/1 list (same length): 1 on tokens the assistant
        produced (SFT trains on those), 0 on the prompt; see `dsv4.data.chat`.
        """
        ids: list[int] = []
        mask: list[int] = []
        for text, is_special, trained in chat_segments(messages, add_generation_prompt):
            piece = [self.token_id(text)] if is_special else self.encode(text)
            ids += piece
            mask += [int(trained)] * len(piece)
        return (ids, mask) if return_mask else ids

    # -- decoding -------------------------------------------------------------------------

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        ids = ids.tolist() if hasattr(ids, "tolist") else [int(i) for i in ids]  # numpy/torch ok
        ids = [ids] if isinstance(ids, int) else ids
        return self._special.decode(ids, skip_special_tokens=skip_special)

    @cached_property
    def _id_bytes(self) -> list[bytes]:
        table = _byte_decoder()
        out: list[bytes] = []
        for i in range(self.vocab_size):
            tok = self._special.id_to_token(i)
            if i < len(SPECIAL_TOKENS):
                out.append(tok.encode("utf-8"))
            else:
                out.append(bytes(table[c] for c in tok))
        return out

    def id_to_bytes(self, token_id: int) -> bytes:
        """The raw bytes of one token (specials: their UTF-8 text). Concatenating the bytes of
        a sequence and UTF-8 decoding gives `decode`; a single token may be a partial
        character, which is why this returns bytes."""
        return self._id_bytes[token_id]

    def id_to_text(self, token_id: int) -> str:
        """One token as text (partial UTF-8 characters become U+FFFD), e.g. for Engram maps."""
        return self._id_bytes[token_id].decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, fingerprint={self.fingerprint})"
