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
