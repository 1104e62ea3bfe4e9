"""Low-rank weight deltas ("domain-aware LoRA" of UltraGen's compressed branches)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from torch import Tensor, nn

from ultragen.models.init import init_leaf

LoRAInit = Literal["zero", "kaiming"]
LORA_TARGETS = ("q", "k", "v", "o")


class LoRA(nn.Module):
    """Delta `scale · B(A(x))` of a dim_in -> dim_out linear; `lora_A`/`lora_B` as in the released checkpoints.

    Default: no bias, B = 0 (the delta starts at zero), scale = alpha / rank with alpha = rank.
    Release-compatible: `bias=True, init_b="kaiming", alpha=rank` (scale 1, non-zero delta at step 0).
    """

    def __init__(
        self,
        dim_in: int,
        dim_out: int,
        rank: int,
        alpha: float | None = None,
        bias: bool = False,
        init_b: LoRAInit = "zero",
    ):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank={rank} must be >= 1; disable the LoRA instead of using rank 0")
        if init_b not in ("zero", "kaiming"):
            raise ValueError(f"LoRA init_b={init_b!r}; choose 'zero' or 'kaiming'")
        self.rank = rank
        self.alpha = float(rank if alpha is None else alpha)
        self.scale = self.alpha / rank
        self.init_b = init_b
        self.lora_A = nn.Linear(dim_in, rank, bias=bias)
        self.lora_B = nn.Linear(rank, dim_out, bias=bias)
        self.init_weights()

    def init_weights(self) -> None:
        """A: kaiming-uniform(a=√5) (nn.Linear's default); B: zero or kaiming; biases zero (through `init_leaf`)."""

        def init(layer: nn.Linear) -> None:
            nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5))
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
            if layer is self.lora_B and self.init_b == "zero":
                nn.init.zeros_(layer.weight)

        init_leaf(self.lora_A, init)
        init_leaf(self.lora_B, init)

    def forward(self, x: Tensor) -> Tensor:
        """(..., dim_in) -> (..., dim_out)."""
        out = self.lora_B(self.lora_A(x))
        return out if self.scale == 1.0 else out * self.scale

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha:g}, init_b={self.init_b}"


class DomainLoRA(nn.ModuleDict):
    """One LoRA delta per target projection in {q, k, v, o} of a shared SelfAttention, for one branch."""

    def __init__(
        self,
        dim: int,
        rank: int,
        targets: Sequence[str] = ("q", "k", "v"),
        alpha: float | None = None,
        bias: bool = False,
        init_b: LoRAInit = "zero",
    ):
        bad = [t for t in targets if t not in LORA_TARGETS]
        if bad or len(set(targets)) != len(targets):
            raise ValueError(f"lora_targets={list(targets)}; choose distinct names from {list(LORA_TARGETS)}")
        super().__init__({t: LoRA(dim, dim, rank, alpha, bias, init_b) for t in targets})
