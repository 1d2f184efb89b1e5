"""Presets validate and build; `dsv4 model summary` counts parameters with stated conventions."""

import json

import pytest
import torch

from dsv4.cli import main
from dsv4.config import PRESETS, make_config
from dsv4.model import build_model
from dsv4.model.summary import count_parameters, summarize


def test_every_preset_validates_and_small_ones_run():
    for name in PRESETS:
        make_config(name).validate()
    for name in ("tiny", "lite", "baseline"):
        model = build_model(name)
        ids = torch.randint(0, model.config.vocab_size, (1, 24))
        loss, stats = model.loss(ids[:, :-1], ids[:, 1:])
        assert torch.isfinite(loss) and stats["lm_loss"] > 0


def test_tiny_and_flagship_switch_every_component_on_and_baseline_none():
    for name in ("tiny", "flagship"):
        c = make_config(name)
        ratios = set(c.compress_ratios)
        assert 0 in ratios and 4 in ratios and any(r > 4 for r in ratios), "window + CSA + HCA layers"
        assert c.index_topk > 0 and c.hc_mult == 4 and c.n_mtp_layers == 1
        assert c.n_routed_experts > c.n_activated_experts > 0
        assert c.n_shared_experts >= 1 and c.n_hash_layers >= 1
        assert c.engram_layer_ids and c.q_lora_rank and c.o_groups and c.attn_sink and c.window_size
    b = make_config("baseline")
    assert (b.hc_mult, b.n_routed_experts, b.engram_layer_ids, b.compress_ratios, b.n_mtp_layers) == (
        1, 0, [], [], 0)


def test_published_presets_carry_the_released_hyperparameters():
    f, p = make_config("v4-flash"), make_config("v4-pro")
    assert (f.n_layers, f.dim, f.n_heads, f.head_dim, f.q_lora_rank, f.o_groups, f.o_lora_rank) == (
        43, 4096, 64, 512, 1024, 8, 1024)
    assert (f.n_routed_experts, f.n_activated_experts, f.moe_inter_dim, f.index_topk) == (256, 6, 2048, 512)
    assert (p.n_layers, p.dim, p.n_heads, p.q_lora_rank, p.o_groups) == (61, 7168, 128, 1536, 16)
    assert (p.n_routed_experts, p.moe_inter_dim, p.index_topk) == (384, 3072, 1024)
    for c in (f, p):
        assert (c.vocab_size, c.window_size, c.index_n_heads, c.index_head_dim, c.hc_mult) == (
            129280, 128, 64, 128, 4)
        assert sum(c.compress_ratios.count(r) for r in (0, 4, 128)) == c.n_layers
    assert f.compress_ratios[:4] == [0, 0, 4, 128] and p.compress_ratios[:4] == [128, 128, 4, 128]


def test_summary_counts_by_component_with_conventions():
    cfg = make_config("flagship")
    model = build_model(cfg)
    s = count_parameters(model, cfg)
    n_all = sum(p.numel() for p in model.parameters())
    assert s["total_with_mtp"] == n_all
    assert sum(c["total"] for c in s["components"].values()) == n_all
    assert s["total"] == n_all - s["components"]["mtp"]["total"]
    emb = s["components"]["embedding"]["total"] + s["components"]["head"]["total"]
    assert s["active_with_embeddings"] == s["active"] + emb
    assert s["components"]["mhc"]["total"] > 0 and s["components"]["mtp"]["total"] > 0
    assert 0 < s["active"] < s["total"]
    assert summarize(cfg)["total"] == s["total"]  # the meta-device build counts the same
    assert {"total", "active"} <= set(s["conventions"])


def test_cli_summary_json(capsys):
    assert main(["model", "summary", "--preset", "tiny", "--json", "--set", "hc_mult=2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["preset"] == "tiny" and isinstance(out["total"], int) and isinstance(out["active"], int)
    assert out["components"]["mhc"]["total"] > 0
    assert main(["model", "summary", "--preset", "tiny"]) == 0
    assert "active" in capsys.readouterr().out


@pytest.mark.parametrize("preset,total,active", [("v4-flash", 284e9, 13e9), ("v4-pro", 1.6e12, 49e9)])
def test_published_sizes_within_3_percent(preset, total, active):
    s = summarize(make_config(preset))
    assert abs(s["total"] / total - 1) < 0.03, s["total"]
    assert abs(s["active"] / active - 1) < 0.03, s["active"]
