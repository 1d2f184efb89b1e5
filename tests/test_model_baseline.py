import pytest
import torch

from dsv4.model import build_model


def test_forward_shape_and_causality():
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 48))
    logits = model(ids)
    assert logits.shape == (2, 48, model.config.vocab_size)
    changed = ids.clone()
    changed[:, 30:] = torch.randint(0, model.config.vocab_size, (2, 18))
    logits2 = model(changed)
    torch.testing.assert_close(logits[:, :30], logits2[:, :30])
    assert not torch.allclose(logits[:, 30:], logits2[:, 30:])


def test_too_long_sequence_is_rejected():
    model = build_model("tiny")
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, model.config.max_seq_len + 1, dtype=torch.long))


def test_casting_the_model_to_bf16_keeps_rope_complex():
    """`model.to(torch.bfloat16)` must not cast the complex RoPE table to a real dtype (that
    drops its imaginary part and silently breaks every attention layer)."""
    torch.manual_seed(0)
    model = build_model("baseline").eval()
    ids = torch.randint(0, model.config.vocab_size, (1, 24))
    with torch.no_grad():
        ref = model(ids).float()
        low = model.to(torch.bfloat16)
        assert low.freqs.is_complex() and low.embed.weight.dtype == torch.bfloat16
        out = low(ids).float()
    assert torch.allclose(out.softmax(-1), ref.softmax(-1), atol=0.05)
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() > 0.9
