"""UMT5Encoder: Wan2.1's text encoder (umT5-XXL, 512 tokens, 4096-dim) from a local directory."""

from __future__ import annotations

import html
import os
import re
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from ultragen.text.base import TextEncoder

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def clean_prompt(text: str) -> str:
    """Wan's prompt cleaning without ftfy: unescape HTML entities twice, collapse whitespace."""
    return re.sub(r"\s+", " ", html.unescape(html.unescape(text))).strip()


def resolve_dirs(path: str, tokenizer_path: str | None) -> tuple[Path, Path]:
    """(encoder dir, tokenizer dir) from an encoder dir or a diffusers Wan repo with text_encoder/ and tokenizer/."""
    root = Path(path).expanduser()
    encoder = root / "text_encoder" if (root / "text_encoder" / "config.json").is_file() else root
    if not (encoder / "config.json").is_file():
        raise FileNotFoundError(
            f"{root} has no config.json (nor text_encoder/config.json); give the local umT5 encoder directory, "
            "e.g. the text_encoder/ folder of Wan2.1-T2V-1.3B-Diffusers"
        )
    if tokenizer_path is not None:
        return encoder, Path(tokenizer_path).expanduser()
    return encoder, root / "tokenizer" if (root / "tokenizer").is_dir() else encoder


class UMT5Encoder(TextEncoder):
    """Frozen `transformers.UMT5EncoderModel`: prompts -> (B, max_length, d_model) float32, padded states zeroed.

    With `offload: true` the weights live on the CPU outside the module tree (so Lightning does not move them
    and checkpoints do not store them); each forward moves them to this module's device, encodes, and moves
    them back. Without it they are an ordinary frozen submodule that follows the LightningModule's device.
    """

    def __init__(
        self,
        path: str,
        tokenizer_path: str | None = None,
        max_length: int = 512,
        dtype: Literal["float32", "bfloat16"] = "bfloat16",
        offload: bool = False,
    ):
        super().__init__()
        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r} is not supported; choose one of {sorted(DTYPES)}")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoTokenizer, UMT5EncoderModel

        encoder_dir, tokenizer_dir = resolve_dirs(path, tokenizer_path)
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        model = UMT5EncoderModel.from_pretrained(encoder_dir, dtype=DTYPES[dtype], local_files_only=True)
        model = model.eval().requires_grad_(False)
        self.offload = offload
        if offload:
            object.__setattr__(self, "model", model)  # not a registered submodule: stays on the CPU
        else:
            self.model = model
        self.register_buffer("_device_anchor", torch.zeros(()), persistent=False)
        self.dim = model.config.d_model
        self.max_length = max_length

    def train(self, mode: bool = True) -> "UMT5Encoder":
        """The encoder stays frozen in eval mode whatever the surrounding module does."""
        super().train(mode)
        self.model.eval()
        return self

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> Tensor:
        device = self._device_anchor.device
        tok = self.tokenizer(
            [clean_prompt(p) for p in prompts],
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            add_special_tokens=True,
            return_tensors="pt",
        ).to(device)
        if self.offload:
            self.model.to(device)
        try:
            states = self.model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]).last_hidden_state
        finally:
            if self.offload:
                self.model.to("cpu")
        return states.float() * tok["attention_mask"].unsqueeze(-1).float()  # (B, L, dim)

    def extra_repr(self) -> str:
        dtype = str(next(self.model.parameters()).dtype).removeprefix("torch.")
        return f"dim={self.dim}, max_length={self.max_length}, dtype={dtype}, offload={self.offload}"
