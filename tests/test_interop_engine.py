"""The inference engine runs converted checkpoints: ours -> transformers -> ours, the
transformers directory itself, and a DeepSeek-layout (FP8/FP4) directory, all through
`load_engine` (layout detection in load_model), greedy with V4 caches."""

from __future__ import annotations

import inspect
import json

from dsv4.cli import main
from dsv4.infer.engine import Engine
from dsv4.infer.load import load_engine
from dsv4.infer.sampling import SamplingParams
from interop_helpers import our_model, save_ours, write_released


def test_engine_runs_converted_checkpoints(tmp_path):
    from dsv4.data.tokenizer import Tokenizer

    tok = Tokenizer.train([inspect.getsource(json), inspect.getsource(inspect)], vocab_size=512)
    model = our_model(seed=11, matrices=False, vocab_size=tok.vocab_size)
    ck = save_ours(model, tmp_path / "ours", {"tokenizer.json": tok.to_str()})
    assert main(["convert", "--to-hf", str(ck), "--out", str(tmp_path / "hf")]) == 0
    assert main(["convert", "--from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "back")]) == 0
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    prompt = "def load(path):\n    with open(path) as f:\n"
    want = Engine(model, tok, max_batch=1, autocast=False).generate([prompt], params)[0].token_ids
    assert len(want) == 24
    for d in ("back", "hf"):  # converted back, and the transformers directory as it is
        eng = load_engine(tmp_path / d, max_batch=1, autocast=False)
        assert eng.generate([prompt], params)[0].token_ids == want, d
    # DeepSeek's released layout (FP8 / FP4): runs, and stays close to the source model
    ds = tmp_path / "ds"
    write_released(ck, model.config, ds)
    (ds / "tokenizer.json").write_text(tok.to_str())
    got = load_engine(ds, max_batch=1, autocast=False).generate([prompt], params)[0].token_ids
    assert len(got) == 24 and got[:4] == want[:4]
