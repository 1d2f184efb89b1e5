"""The whole model with EVERY component on (`tiny`): causality, training step, checkpoint roundtrip.

Lengths fill several compressed blocks: at T = 128, CSA (ratio 4) has 32 blocks of which the
indexer keeps top-4, HCA (ratio 16) has 8, the window is 16 tokens, Engram hashes 2- and
3-grams and runs its dilated causal conv, and the MTP block predicts two tokens ahead.
"""

import pytest
import torch

from dsv4.model import build_model
from dsv4.model.attention import Attention
from dsv4.model.engram import Engram
from dsv4.model.mhc import HyperConnection
from dsv4.model.moe import MoE


def _tiny():
    torch.manual_seed(0)
    model = build_model("tiny")
    kinds = {type(m) for m in model.modules()}
    assert {Attention, Engram, MoE, HyperConnection} <= kinds and model.mtp is not None
    ratios = {m.ratio for m in model.modules() if isinstance(m, Attention)}
    assert {0, 4, 16} <= ratios
    return model


def _mtp_logits(model, ids):
    x, nxt = ids[:, :-1], ids[:, 1:]
    ctx = model._context(x)
    return model.head(model.mtp(model._streams(x, ctx), nxt, model.embed, ctx))


@pytest.mark.parametrize("train_mode", [False, True])
def test_every_component_on_is_causal(train_mode):
    model = _tiny().train(train_mode)
    T = model.config.max_seq_len
    ids = torch.randint(0, model.config.vocab_size, (2, T))
    with torch.no_grad():
        base = model(ids)
        base_mtp = _mtp_logits(model, ids)
        # cut points: inside the first window, at CSA / HCA block boundaries, late in the sequence
        for cut in (9, 47, 64, 100, 127):
            changed = ids.clone()
            changed[:, cut:] = torch.randint(0, model.config.vocab_size, (2, T - cut))
            out = model(changed)
            torch.testing.assert_close(out[:, :cut], base[:, :cut], rtol=1e-5, atol=1e-5)
            assert not torch.allclose(out[:, cut], base[:, cut])
            # MTP position t reads tokens <= t + 1
            mtp = _mtp_logits(model, changed)
            if cut > 1:
                torch.testing.assert_close(mtp[:, :cut - 1], base_mtp[:, :cut - 1], rtol=1e-5, atol=1e-5)
            assert not torch.allclose(mtp[:, cut - 1], base_mtp[:, cut - 1])


def test_every_component_on_trains_and_roundtrips():
    model = _tiny()
    T = model.config.max_seq_len
    ids = torch.randint(0, model.config.vocab_size, (2, T + 1))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(4):
        model.set_training_progress(step / 4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, stats = model.loss(ids[:, :-1], ids[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.after_optimizer_step()
        losses.append(stats["lm_loss"])
    assert losses[-1] < losses[0]
    for key in ("mtp_loss", "mhc_amax_fwd", "mhc_amax_bwd"):
        assert key in stats
    assert 0.99 < stats["mhc_amax_fwd"] < 2.0
    fresh = build_model("tiny")
    fresh.load_state_dict(model.state_dict())
    model.eval(), fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids[:, :T]), model(ids[:, :T]))
