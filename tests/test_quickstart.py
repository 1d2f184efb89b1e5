"""`dsv4 quickstart --preset tiny` end to end: data -> pretrain -> SFT -> RL -> distill (+ scratch)
-> eval -> report within a small budget; a rerun skips every finished stage."""

from __future__ import annotations

import json
import time

import pytest

from dsv4.cli import main
from dsv4.quickstart import STAGES, QuickstartConfig, format_summary, quickstart
from helpers_train import corpus_sources


@pytest.mark.slow
def test_quickstart_tiny_end_to_end_and_rerun_skips_finished_stages(tmp_path):
    out = tmp_path / "qs"
    cfg = QuickstartConfig(
        budget_min=0.6, out_dir=str(out), preset="tiny", student_preset="tiny", progress=False, threads=1,
        data_sources=corpus_sources()[:3], vocab_size=512, batch_size=8, seq_len=64,
        student_overrides={"dim": 32}, sft_tasks=200, sft_batch_size=4,
        rl={"group_size": 4, "tasks_per_step": 2, "max_new_tokens": 32},
        heldout_per_family=1, heldout_samples=2, humaneval_limit=2, eval_new_tokens=32, speed_tokens=8,
    )
    t0 = time.perf_counter()
    first = quickstart(cfg)
    wall = time.perf_counter() - t0
    assert wall < 60 * cfg.budget_min + 90  # training holds its budget; eval and report are small
    st = first["stages"]
    assert st["pretrain"]["step"] > 3 and st["pretrain"]["final_loss"] < st["pretrain"]["first_loss"]
    assert st["sft"]["step"] >= 1 and st["rl"]["step"] >= 1
    rl_log = [json.loads(x) for x in (out / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert {"reward", "pass_rate", "length", "truncated"} <= set(rl_log[0])
    for part in ("offpolicy", "onpolicy"):
        assert (out / "distill" / part / "latest").exists()
    h = first["headline"]
    for k in ("heldout_pass@1_sft", "heldout_pass@1_rl", "distill_val_loss", "scratch_val_loss",
              "lite_vs_flagship_decode_speedup"):
        assert h[k] is not None
    assert 0.0 <= h["heldout_pass@1_rl"] <= 1.0 and h["scratch_val_loss"] > 0
    assert first["stages"]["eval"]["humaneval"]["tasks"] == 2
    # post-training stays on the starter families; the held-out summary says which it holds
    from dsv4.tasks import STARTER_FAMILIES

    held = st["eval"]["heldout"]["rl"]
    by_family = held["by_family"]  # one task per family: the balanced held-out set
    assert set(by_family) <= set(STARTER_FAMILIES) and {n for _, n in by_family.values()} == {1}
    assert held["n"] == len(by_family) >= 5 and held["samples"] == 2 and "temperature 0.6" in held["protocol"]
    assert set(held["by_family_greedy"]) == set(by_family)
    # the greedy breakdown counts whole passes, and they add up to the greedy pass@1
    greedy_passes = [p for p, _ in held["by_family_greedy"].values()]
    assert all(isinstance(p, int) for p in greedy_passes)
    assert sum(greedy_passes) == round(held["pass@1_greedy"] * held["n"])
    assert 0.0 <= h["heldout_pass@1_greedy_rl"] <= 1.0 and h["heldout_pass@1_greedy_sft"] is not None
    # the scratch baseline trains exactly as many steps as the distilled student did
    dist = st["distill"]
    assert st["scratch"]["step"] == dist["offpolicy"]["step"] + dist["onpolicy"]["step"]
    report = (out / "report.md").read_text()
    assert "![training loss](plots/loss.png)" in report and (out / "plots" / "rl_reward.png").exists()
    text = format_summary(first, cfg.out_dir)
    assert f"dsv4 chat --ckpt {out}/rl" in text and "lic --provider local" in text and "held-out" in text
    for stage in STAGES[1:7]:
        assert (out / stage / "stage.json").exists()

    t0 = time.perf_counter()
    again = quickstart(cfg)  # every stage finished: reused, not rerun
    assert time.perf_counter() - t0 < 30
    assert again["headline"] == first["headline"]
    assert again["stages"]["rl"]["step"] == st["rl"]["step"]


def test_quickstart_rejects_unknown_preset(tmp_path, capsys):
    assert main(["quickstart", "--preset", "gigantic", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dsv4: error: unknown preset") and not (tmp_path / "data").exists()
