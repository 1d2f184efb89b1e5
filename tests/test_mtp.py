"""Multi-token prediction: loss, weight schedule, target alignment, causality, drafting."""

import pytest
import torch
import torch.nn.functional as F

from dsv4.model import build_model
from dsv4.model.mtp import mtp_targets

SMALL = dict(n_layers=2, vocab_size=256, max_seq_len=32, n_mtp_layers=1)


def _model(**kw):
    torch.manual_seed(0)
    return build_model("baseline", **{**SMALL, **kw})


def test_mtp_targets_are_the_token_after_next():
    targets = torch.tensor([[5, 6, 7, -100, 9]])
    next_ids, later = mtp_targets(targets)
    assert next_ids.tolist() == [[5, 6, 7, 0, 9]]
    # position t predicts targets[t + 1]; unknown when either token is ignored or past the end
    assert later.tolist() == [[6, 7, -100, -100, -100]]


@pytest.mark.parametrize("hc_mult", [1, 4])
def test_mtp_loss_is_in_the_total_at_its_scheduled_weight(hc_mult):
    model = _model(hc_mult=hc_mult)
    ids = torch.randint(0, 256, (2, 33))
    x, y = ids[:, :-1], ids[:, 1:]
    total, stats = model.loss(x, y)
    assert stats["mtp_weight"] == pytest.approx(0.3)
    assert total.item() == pytest.approx(stats["lm_loss"] + 0.3 * stats["mtp_loss"], rel=1e-5)
    # the MTP loss is the cross-entropy of the MTP head against x_{t+2}, recomputed by hand
    ctx = model._context(x)
    streams = model._streams(x, ctx)
    logits = model.head(model.mtp(streams, y, model.embed, ctx))
    ref = F.cross_entropy(logits[:, :-1].flatten(0, 1), y[:, 1:].flatten())
    assert stats["mtp_loss"] == pytest.approx(ref.item(), rel=1e-4)
    total.backward()
    assert model.mtp.e_proj.weight.grad.abs().sum() > 0 and model.mtp.h_proj.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.layers[0].attn.parameters())  # into the trunk


def test_mtp_weight_schedule():
    model = _model()
    ids = torch.randint(0, 256, (1, 17))
    weights = []
    for frac in (0.0, 0.5, 0.67, 0.7, 1.0):
        model.set_training_progress(frac)
        weights.append(model.loss(ids[:, :-1], ids[:, 1:])[1]["mtp_weight"])
    assert weights == pytest.approx([0.3, 0.3, 0.3, 0.1, 0.1])
    custom = _model(mtp_loss_weight=0.5, mtp_loss_weight_late=0.05, mtp_weight_switch=0.5)
    custom.set_training_progress(0.49)
    assert custom.mtp_weight == 0.5
    custom.set_training_progress(0.5)
    assert custom.mtp_weight == 0.05


def test_no_mtp_means_no_mtp_stats():
    model = _model(n_mtp_layers=0)
    assert model.mtp is None
    ids = torch.randint(0, 256, (1, 17))
    assert "mtp_loss" not in model.loss(ids[:, :-1], ids[:, 1:])[1]
    with pytest.raises(ValueError, match="no MTP"):
        model.mtp_draft(ids)


@pytest.mark.parametrize("hc_mult", [1, 4])
def test_mtp_is_causal(hc_mult):
    # The MTP output at t may depend on tokens up to t+1 only.
    model = _model(hc_mult=hc_mult).eval()
    ids = torch.randint(0, 256, (1, 32))

    def mtp_logits(seq):
        ctx = model._context(seq[:, :-1])
        return model.head(model.mtp(model._streams(seq[:, :-1], ctx), seq[:, 1:], model.embed, ctx))

    base = mtp_logits(ids)
    changed = ids.clone()
    changed[0, 20] = (ids[0, 20] + 1) % 256
    out = mtp_logits(changed)
    torch.testing.assert_close(out[:, :19], base[:, :19])  # positions t <= 18 see tokens <= 19
    assert not torch.allclose(out[:, 19], base[:, 19])  # t = 19 sees x_20 as its next token


def test_mtp_draft_is_consistent_with_the_forward_pass():
    model = _model(hc_mult=4).eval()
    ids = torch.randint(0, 256, (2, 12))
    nxt, draft = model.mtp_draft(ids)
    assert nxt.shape == draft.shape == (2,)
    assert torch.equal(nxt, model(ids)[:, -1].argmax(-1))
    seq = torch.cat([ids, nxt[:, None]], 1)
    ctx = model._context(ids)
    mtp = model.head(model.mtp(model._streams(ids, ctx), seq[:, 1:], model.embed, ctx))
    assert torch.equal(draft, mtp[:, -1].argmax(-1))
