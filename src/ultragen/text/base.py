"""TextEncoder interface and the parameter-free NullTextEncoder."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class TextEncoder(nn.Module):
    """Frozen prompt encoder. forward(prompts) -> (B, max_length, dim), states past each prompt zeroed (as Wan)."""

    dim: int
    max_length: int

    def forward(self, prompts: list[str]) -> Tensor:
        raise NotImplementedError


class NullTextEncoder(TextEncoder):
    """Unconditional runs: every prompt maps to zeros of shape (max_length, dim)."""

    def __init__(self, dim: int = 64, max_length: int = 8):
        super().__init__()
        self.dim = dim
        self.max_length = max_length
        self.register_buffer("_device_anchor", torch.zeros(()), persistent=False)

    def forward(self, prompts: list[str]) -> Tensor:
        return self._device_anchor.new_zeros(len(prompts), self.max_length, self.dim)
