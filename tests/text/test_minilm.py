import torch

from ultragen.text import MiniLMEncoder, NullTextEncoder


def test_minilm_real_model_states_and_padding():
    enc = MiniLMEncoder(max_length=12)
    out = enc(["a red ball rolls across the grass", "sea"])
    assert out.shape == (2, 12, 384) and enc.dim == 384
    used = out.abs().sum(-1) > 0
    assert used[1].sum() == 3  # [CLS] sea [SEP]
    assert used[0].sum() > used[1].sum()
    assert not used[1, 3:].any()
    again = enc(["sea", "a red ball rolls across the grass"])
    torch.testing.assert_close(again[0], out[1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out[0], enc(["a blue ball rolls across the grass"])[0])


def test_null_encoder():
    assert torch.equal(NullTextEncoder(dim=5, max_length=3)(["x", "y"]), torch.zeros(2, 3, 5))
