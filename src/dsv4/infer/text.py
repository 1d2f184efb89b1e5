"""Incremental detokenisation with stop strings, for streaming.

Byte-level BPE tokens need not end on a character boundary, and a stop string may arrive
split over several tokens. `TextStream` re-decodes the generated ids, cuts the text at the
first stop string, and releases only text that can no longer change: it holds back a
trailing U+FFFD (an incomplete UTF-8 sequence) and any tail that could still grow into a
stop string.
"""

from __future__ import annotations


class TextStream:
    def __init__(self, tokenizer, stop: list[str] | None = None):
        self.tokenizer = tokenizer
        self.stop = [s for s in (stop or []) if s]
        self.longest = max((len(s) for s in self.stop), default=0)
        self.ids: list[int] = []
        # byte-level tokenizers expose each token's bytes: appending is O(1) per token
        self._bytes = bytearray() if hasattr(tokenizer, "id_to_bytes") else None
        self.text = ""
        self.sent = 0  # characters already released
        self.stopped = False  # a stop string was found; text ends before it

    def add(self, token: int) -> None:
        if self.stopped or self.tokenizer is None:
            self.ids.append(token)
            return
        prev = len(self.text)
        self.ids.append(token)
        if self._bytes is not None:
            self._bytes += self.tokenizer.id_to_bytes(token)
            self.text = self._bytes.decode("utf-8", errors="replace")
        else:
            self.text = self.tokenizer.decode(self.ids)
        if self.stop:
            start = max(0, prev - self.longest - 4)  # a stop may straddle the old end
            cut = min((i for i in (self.text.find(s, start) for s in self.stop) if i >= 0), default=-1)
            if cut >= 0:
                self.text = self.text[:cut]
                self.stopped = True

    def _safe_end(self) -> int:
        end = len(self.text)
        while end > self.sent and self.text[end - 1] == "\ufffd":
            end -= 1
        for k in range(min(self.longest - 1, end - self.sent), 0, -1):
            tail = self.text[end - k:end]
            if any(s.startswith(tail) for s in self.stop):
                return end - k
        return end

    def pop(self, final: bool = False) -> str:
        """Text not yet released that is final (all of it when `final` or stopped)."""
        end = len(self.text) if (final or self.stopped) else self._safe_end()
        if end <= self.sent:
            return ""
        out = self.text[self.sent:end]
        self.sent = end
        return out
