"""The attention seam: token grid, per-call context, strategy base class and the kernel function."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from ultragen.models.rope import Rotary, RotaryTables

if TYPE_CHECKING:
    from ultragen.models.blocks import SelfAttention

# "sdpa" lets PyTorch pick (flash / efficient / cuDNN on GPU, math on CPU); the others force one kernel. "flex" is
# compiled FlexAttention: dense calls run it without a mask, block-sparse strategies pass their cached BlockMask.
BACKENDS: dict[str, list[SDPBackend] | None] = {
    "sdpa": None,
    "math": [SDPBackend.MATH],
    "flash": [SDPBackend.FLASH_ATTENTION],
    "efficient": [SDPBackend.EFFICIENT_ATTENTION],
    "cudnn": [SDPBackend.CUDNN_ATTENTION],
    "flex": None,
}


@functools.cache
def compiled_flex_attention() -> Callable[..., Tensor]:
    """`flex_attention` compiled once per process (uncompiled it materialises the scores and is only a reference)."""
    return torch.compile(flex_attention, dynamic=False)


def check_backend(backend: str) -> str:
    """Return backend if known, else raise naming the valid choices."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {sorted(BACKENDS)}")
    return backend


@dataclass(frozen=True)
class VideoGrid:
    """Token grid after patchify; N = t * h * w."""

    t: int
    h: int
    w: int

    @property
    def numel(self) -> int:
        return self.t * self.h * self.w

    def __iter__(self):
        return iter((self.t, self.h, self.w))

    def __str__(self) -> str:
        return f"{self.t}x{self.h}x{self.w}"

    @classmethod
    def parse(cls, text: str) -> "VideoGrid":
        """Parse 'TxHxW', e.g. '21x68x120'."""
        m = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*[xX×]\s*(\d+)\s*", text)
        if not m:
            raise ValueError(f"grid {text!r} is not of the form TxHxW, e.g. 21x68x120")
        return cls(*(int(g) for g in m.groups()))


@dataclass(frozen=True)
class AttentionCost:
    """Forward FLOPs (2 per multiply-add) of one layer: attention maps and everything else (projections, LoRA,
    convs)."""

    maps: float = 0.0
    other: float = 0.0

    @property
    def total(self) -> float:
        return self.maps + self.other

    def __add__(self, other: "AttentionCost") -> "AttentionCost":
        return AttentionCost(self.maps + other.maps, self.other + other.other)


def windows_maps(dim: int, shapes: dict[tuple[int, int, int], int]) -> float:
    """Σ over windows of 4·n²·D (QKᵀ and AV), for window shape (t, h, w) -> count."""
    return sum(count * 4.0 * (t * h * w) ** 2 * dim for (t, h, w), count in shapes.items())


@dataclass
class AttentionContext:
    """What every strategy may read during one forward pass."""

    grid: VideoGrid
    rope: RotaryTables  # global 3D tables; strategies slice or re-index them
    timestep_freq: Tensor  # (B, freq_dim) sinusoidal features of the clip's t (per-token t: the largest), for gates

    def grid_rope(self, device: torch.device) -> Rotary:
        """Rotary tables of the full token grid, (N, head_dim / 2)."""
        return self.rope.for_grid(*self.grid, device=device)


def resolve_layers(name: str, layers: Sequence[int], num_layers: int) -> list[int]:
    """Layer indices as given, negative ones counted from the end (-1 = the last layer); sorted and unique.

    Raises naming `name` and the indices outside -num_layers .. num_layers - 1."""
    bad = [i for i in layers if not -num_layers <= i < num_layers]
    if bad:
        raise ValueError(
            f"{name} {bad} out of range for num_layers={num_layers}; use indices from {-num_layers} to "
            f"{num_layers - 1} "
            "(negative ones count from the last layer)"
        )
    return sorted({i % num_layers for i in layers})


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    backend: str = "sdpa",
    scale: float | None = None,
    block_mask: BlockMask | None = None,
) -> Tensor:
    """Scaled dot-product attention. q (B, Lq, H, D), k/v (B, Lk, H, D) -> (B, Lq, H * D).

    `block_mask` (FlexAttention's, over (Lq, Lk)) restricts which key blocks each query block sees; only `flex` takes
    one."""
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, L, D)
    kernels = BACKENDS[check_backend(backend)]
    if backend == "flex":
        out = compiled_flex_attention()(q, k, v, block_mask=block_mask, scale=scale)
    elif block_mask is not None:
        raise ValueError(f"a block mask needs attention backend 'flex', not {backend!r}; set attention_backend: flex")
    elif kernels is None:
        out = F.scaled_dot_product_attention(q, k, v, scale=scale)
    else:
        with sdpa_kernel(kernels):
            out = F.scaled_dot_product_attention(q, k, v, scale=scale)
    return out.transpose(1, 2).flatten(2)


def check_flex_block(volume: int, what: str) -> int:
    """`volume` if FlexAttention's GPU kernels take it as a block size, else raise naming `what` and the fix.

    The kernels' tiles (BLOCK_M/BLOCK_N) are at most 128 and must divide the block; powers of two from 16 shrink the
    tiles to fit."""
    if volume % 128 and not (volume >= 16 and volume & (volume - 1) == 0):
        raise ValueError(
            f"{what} has {volume} tokens, which FlexAttention cannot use as a block (it needs a multiple of 128 or a "
            "power of two from 16); choose such a size or attention_backend: sdpa"
        )
    return volume


class AttentionBackend:
    """The kernel every attention call of a network goes through: `attention` with one of `BACKENDS`.

    `WanDiT(attention_backend=...)` builds one and hands it to every self-attention strategy and cross-attention;
    code outside `models/` may replace it (sequence parallelism wraps it to attend over a subset of heads).
    """

    def __init__(self, name: str = "sdpa"):
        self.name = check_backend(name)

    def __call__(
        self, q: Tensor, k: Tensor, v: Tensor, scale: float | None = None, block_mask: BlockMask | None = None
    ) -> Tensor:
        """q (B, Lq, H, D), k/v (B, Lk, H, D) -> (B, Lq, H·D); `block_mask` with `flex` only."""
        return attention(q, k, v, self.name, scale, block_mask)

    def __repr__(self) -> str:
        return self.name


def as_backend(backend: "str | AttentionBackend") -> AttentionBackend:
    """`backend` itself, or the `AttentionBackend` of that name (raises naming the valid names)."""
    return backend if isinstance(backend, AttentionBackend) else AttentionBackend(backend)


class AttentionStrategy(nn.Module):
    """How one self-attention layer mixes tokens; may own weights (kept under `self_attn.strategy.*`).

    `dim`, `num_heads`, `layer_idx`, `freq_dim` (width of `AttentionContext.timestep_freq`) and `backend` are
    supplied by the network, in that order; every other init argument comes from YAML, by keyword.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        layer_idx: int,
        freq_dim: int = 256,
        backend: "str | AttentionBackend" = "sdpa",
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.layer_idx = layer_idx
        self.freq_dim = freq_dim
        self.backend = as_backend(backend)

    def forward(self, attn: "SelfAttention", x: Tensor, ctx: AttentionContext) -> Tensor:
        """(B, N, C) -> (B, N, C), before attn.o. Uses attn's shared q/k/v/norms; may add its own deltas."""
        raise NotImplementedError

    def cost(self, grid: VideoGrid) -> AttentionCost:
        """Forward FLOPs on `grid` without the shared output projection W_o (`ultragen cost` adds it)."""
        raise NotImplementedError(f"{type(self).__name__} has no cost(grid); implement it to use it in `ultragen cost`")

    def describe(self) -> str:
        """Short name with this layer's windows or factors, for cost tables and plots."""
        return type(self).__name__

    def extra_repr(self) -> str:
        return f"layer={self.layer_idx}, backend={self.backend}"
