import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WDS_SECURE", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def save_random_umt5() -> Callable[..., Path]:
    """`save_random_umt5(out_dir, corpus)` writes a small random-weight umT5 encoder and a Unigram tokenizer trained
    on `corpus` to `out_dir` and returns it (what `UMT5Encoder` loads, offline and CPU-sized)."""

    def save(
        out_dir: str | Path,
        corpus: list[str],
        d_model: int = 32,
        num_layers: int = 2,
        num_heads: int = 4,
        d_ff: int = 64,
        vocab_size: int = 64,
    ) -> Path:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
        from transformers import T5TokenizerFast, UMT5Config, UMT5EncoderModel

        out_dir = Path(out_dir)
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        specials = ["<pad>", "</s>", "<unk>"]  # umT5's ids 0, 1, 2
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>")
        tok.train_from_iterator(corpus, trainer)
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
        fast = T5TokenizerFast(
            tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=0
        )
        fast.save_pretrained(out_dir)
        config = UMT5Config(
            vocab_size=tok.get_vocab_size(),
            d_model=d_model,
            d_kv=d_model // num_heads,
            d_ff=d_ff,
            num_layers=num_layers,
            num_heads=num_heads,
            relative_attention_num_buckets=8,
            feed_forward_proj="gated-gelu",
            pad_token_id=0,
            eos_token_id=1,
        )
        UMT5EncoderModel(config).save_pretrained(out_dir)
        return out_dir

    return save
