"""Sampling: text comes out, the same seed gives the same text, the filters do what they say."""

from __future__ import annotations

import pytest
import torch

from dsv4.cli import main
from dsv4.infer.sample import SamplingParams, generate_ids, generate_text
from dsv4.infer.sampling import filtered_probs, sample_token
from dsv4.model import load_model
from dsv4.train.pretrain import pretrain
from helpers_train import tiny_config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("run")
    pretrain(tiny_config(out, data_dir, max_steps=6, save_every=0, eval_every=0))
    return out


def test_generate_is_deterministic_with_a_seed(run_dir):
    p = SamplingParams(max_new_tokens=40, temperature=1.0, top_p=0.95, seed=3)
    a = "".join(generate_text(run_dir, "def main(", p))
    b = "".join(generate_text(run_dir, "def main(", p))
    c = "".join(
        generate_text(run_dir, "def main(", SamplingParams(max_new_tokens=40, temperature=1.0, seed=4))
    )
    assert a == b and len(a) > 10
    assert a != c


def test_cli_streams_prompt_and_completion(run_dir, capsys):
    argv = [
        "generate",
        "--ckpt",
        str(run_dir),
        "--prompt",
        "import ",
        "--max-new-tokens",
        "20",
        "--seed",
        "0",
    ]
    assert main(argv) == 0
    out1 = capsys.readouterr().out
    assert main(argv) == 0
    out2 = capsys.readouterr().out
    assert out1 == out2 and out1.startswith("import ") and len(out1) > len("import ") + 5


def test_greedy_equals_top_k_1_and_stops_at_eos(run_dir):
    model = load_model(run_dir)
    prompt = [5, 6, 7]
    greedy = list(generate_ids(model, prompt, SamplingParams(max_new_tokens=12, temperature=0.0)))
    topk1 = list(
        generate_ids(model, prompt, SamplingParams(max_new_tokens=12, temperature=1.5, top_k=1, seed=9))
    )
    assert greedy == topk1 and len(greedy) == 12
    # declare the first greedy token to be eos: generation stops before yielding it
    assert (
        list(
            generate_ids(model, prompt, SamplingParams(max_new_tokens=12, temperature=0.0), eos_id=greedy[0])
        )
        == []
    )


def test_filter_logits_top_k_and_top_p():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))

    def kept(top_k, top_p):  # token ids the sampler's filter leaves a nonzero probability
        probs, ids = filtered_probs(logits, 1.0, top_k, top_p)
        return sorted(ids[probs > 0].tolist())

    assert kept(top_k=2, top_p=1.0) == [0, 1]
    assert kept(top_k=0, top_p=0.7) == [0, 1]  # 0.5 < 0.7 <= 0.8
    assert kept(top_k=0, top_p=0.5) == [0]
    assert kept(top_k=0, top_p=1.0) == [0, 1, 2, 3]
    gen = torch.Generator().manual_seed(0)
    params = SamplingParams(top_p=0.7, temperature=1.0).to_engine()  # the CLI params, as the engine sees them
    draws = {sample_token(logits, params, gen) for _ in range(200)}
    assert draws == {0, 1}
