"""UMT5Encoder on a tiny random umT5 + trained Unigram tokenizer saved to disk and loaded back."""

import shutil

import pytest
import torch
from transformers import AutoTokenizer, UMT5EncoderModel

from ultragen.text.umt5 import UMT5Encoder, clean_prompt

CORPUS = [
    "a red fox jumps over the lazy dog",
    "aerial view of snowy mountains at sunset",
    "a cat sleeps on a warm windowsill",
    "waves crash on a rocky shore",
]


@pytest.fixture(scope="module")
def umt5_dir(tmp_path_factory, save_random_umt5):
    torch.manual_seed(0)
    return save_random_umt5(tmp_path_factory.mktemp("umt5"), CORPUS)


def test_shapes_and_padding_zeroed(umt5_dir):
    enc = UMT5Encoder(str(umt5_dir), max_length=16, dtype="float32")
    prompts = ["a red fox", "a cat", "aerial view of snowy mountains at sunset"]  # the last one is truncated
    out = enc(prompts)
    assert out.shape == (3, 16, enc.dim) and enc.dim == 32 and out.dtype == torch.float32
    lengths = [min(n, 16) for n in enc.tokenizer(prompts, return_length=True)["length"]]
    assert lengths[0] < 16 and lengths[1] < lengths[0] and lengths[2] == 16
    for row, n in zip(out, lengths):
        assert (row[n:] == 0).all()
        assert (row[:n].abs().sum(-1) > 0).all()


def test_real_tokens_match_an_unpadded_run(umt5_dir):
    enc = UMT5Encoder(str(umt5_dir), max_length=24, dtype="float32")
    ids = AutoTokenizer.from_pretrained(umt5_dir)(["waves crash on a rocky shore"], return_tensors="pt")["input_ids"]
    ref = UMT5EncoderModel.from_pretrained(umt5_dir).eval()(input_ids=ids).last_hidden_state[0]
    out = enc(["waves  crash on\ta rocky shore "])[0]  # cleaned to the same text
    torch.testing.assert_close(out[: ids.shape[1]], ref, atol=1e-5, rtol=1e-5)


def test_repo_layout_bf16_and_offload(umt5_dir, tmp_path):
    repo = tmp_path / "Wan2.1-T2V-1.3B-Diffusers"
    shutil.copytree(umt5_dir, repo / "text_encoder")
    shutil.copytree(umt5_dir, repo / "tokenizer")
    ref = UMT5Encoder(str(umt5_dir), max_length=12, dtype="float32")(CORPUS)
    bf16 = UMT5Encoder(str(repo), max_length=12)
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    torch.testing.assert_close(bf16(CORPUS), ref, atol=0.1, rtol=0.05)
    offloaded = UMT5Encoder(str(repo), max_length=12, dtype="float32", offload=True)
    assert not list(offloaded.parameters()) and not offloaded.state_dict()
    offloaded.train()
    assert not offloaded.model.training
    torch.testing.assert_close(offloaded(CORPUS), ref)
    assert next(offloaded.model.parameters()).device.type == "cpu"


def test_clean_prompt_and_errors(tmp_path):
    assert clean_prompt("  a\tred &amp;amp; blue\n fox ") == "a red & blue fox"
    with pytest.raises(FileNotFoundError, match="no config.json"):
        UMT5Encoder(str(tmp_path))
    with pytest.raises(ValueError, match="dtype='float16'"):
        UMT5Encoder(str(tmp_path), dtype="float16")
