"""`--ckpt DIR`: completions from our own checkpoint, completion-style (the model continues
the prompt, cut at the stop sequences).

An adapter over the model and sampler of the train/infer code, imported lazily so that
`dsv4 eval` with an endpoint or a samples file needs no torch. It expects
`dsv4.model.load_model(ckpt_dir) -> (model, tokenizer)` and
`dsv4.infer.generate(model, tokenizer, prompt, max_new_tokens=, temperature=, stop=) -> str`;
if those are missing from this build it says so in one line.
"""

from __future__ import annotations

import os

from dsv4.errors import UserError
from dsv4.eval.postprocess import STOP_SEQUENCES, completion_from_base


class CkptSource:
    def __init__(self, ckpt_dir: str, temperature: float, max_new_tokens: int):
        if not os.path.isdir(ckpt_dir):
            raise UserError(f"--ckpt {ckpt_dir!r} is not a directory")
        try:
            from dsv4.infer import generate
            from dsv4.model import load_model
        except ImportError as e:
            raise UserError(f"--ckpt needs dsv4.model.load_model and dsv4.infer.generate, which this "
                            f"build lacks ({e}); serve the checkpoint and use --base-url, or --samples"
                            ) from None
        self._generate = generate
        self.model, self.tokenizer = load_model(ckpt_dir)
        self.temperature, self.max_new_tokens = temperature, max_new_tokens

    def generator(self, problem: dict, idx: int) -> str:
        text = self._generate(self.model, self.tokenizer, problem["prompt"],
                              max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                              stop=STOP_SEQUENCES)
        return completion_from_base(text)

    def preflight(self, problem: dict) -> str:
        return self.generator(problem, 0)

    def close(self) -> None:
        pass
