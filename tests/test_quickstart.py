"""`dsv4 quickstart`: data -> pretrain within the budget -> sample -> summary; a rerun reuses it all."""

from __future__ import annotations

import json
import time

from dsv4.cli import main
from dsv4.quickstart import QuickstartConfig, format_summary, quickstart
from helpers_train import corpus_sources


def test_quickstart_runs_within_budget_and_reruns_from_its_outputs(tmp_path):
    cfg = QuickstartConfig(
        budget_min=0.12,
        out_dir=str(tmp_path / "qs"),
        preset="tiny",
        progress=False,
        threads=1,
        data_sources=corpus_sources()[:3],
        vocab_size=512,
        batch_size=8,
        seq_len=64,
        sample_tokens=30,
    )
    t0 = time.perf_counter()
    first = quickstart(cfg)
    wall = time.perf_counter() - t0
    s = first["pretrain"]
    assert s["step"] > 5 and s["final_loss"] < s["first_loss"]
    assert wall < 60 * cfg.budget_min + 8  # the budget holds (a little slack for the shared CI machine)
    assert len(first["sample"]) > 0
    assert json.loads((tmp_path / "qs" / "summary.json").read_text())["pretrain"]["step"] == s["step"]
    text = format_summary(first, cfg.out_dir)
    assert "dsv4 generate --ckpt" in text and "bits/byte" in text and first["sample"] in text

    again = quickstart(cfg)  # data reused, training resumed with its time already spent
    assert again["pretrain"]["step"] == s["step"]
    assert again["sample"] == first["sample"]  # same checkpoint, same seed


def test_quickstart_rejects_unknown_preset(tmp_path, capsys):
    assert main(["quickstart", "--preset", "gigantic", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dsv4: error: unknown preset") and not (tmp_path / "data").exists()
