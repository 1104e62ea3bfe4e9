"""Wan2.1 DiT block parts with Wan's parameter names: SelfAttention, CrossAttention, DiTBlock."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ultragen.models.attention.base import AttentionBackend, AttentionContext, AttentionStrategy, as_backend


class Projections(nn.Module):
    """Wan's attention weights: q/k/v/o linears and RMSNorms on q and k over the full width."""

    def __init__(self, dim: int, num_heads: int, eps: float = 1e-6):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = nn.RMSNorm(dim, eps=eps)
        self.norm_k = nn.RMSNorm(dim, eps=eps)

    def heads(self, x: Tensor) -> Tensor:
        """(B, L, C) -> (B, L, H, D)."""
        return x.unflatten(-1, (self.num_heads, self.head_dim))


class SelfAttention(Projections):
    """Self-attention weights of a block; the strategy decides which tokens meet."""

    def __init__(self, dim: int, num_heads: int, strategy: AttentionStrategy, eps: float = 1e-6):
        super().__init__(dim, num_heads, eps)
        self.strategy = strategy

    def qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Normalised q, k and plain v of x (B, L, C), each (B, L, H, D)."""
        return (
            self.heads(self.norm_q(self.q(x))),
            self.heads(self.norm_k(self.k(x))),
            self.heads(self.v(x)),
        )

    def forward(self, x: Tensor, ctx: AttentionContext) -> Tensor:
        return self.o(self.strategy(self, x, ctx))  # (B, N, C)


class CrossAttention(Projections):
    """Text cross-attention (Wan T2V): queries from video tokens, keys/values from text tokens."""

    def __init__(self, dim: int, num_heads: int, eps: float = 1e-6, backend: AttentionBackend | str = "sdpa"):
        super().__init__(dim, num_heads, eps)
        self.backend = as_backend(backend)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        """x (B, N, C), context (B, L, C) -> (B, N, C)."""
        q = self.heads(self.norm_q(self.q(x)))
        k = self.heads(self.norm_k(self.k(context)))
        v = self.heads(self.v(context))
        return self.o(self.backend(q, k, v))


class DiTBlock(nn.Module):
    """AdaLN-modulated self-attention, text cross-attention and GELU(tanh) FFN (Wan2.1 order)."""

    def __init__(
        self,
        dim: int,
        ffn_dim: int,
        num_heads: int,
        strategy: AttentionStrategy,
        eps: float = 1e-6,
        cross_attn_norm: bool = True,
        backend: AttentionBackend | str = "sdpa",
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.self_attn = SelfAttention(dim, num_heads, strategy, eps)
        self.norm3 = nn.LayerNorm(dim, eps=eps, elementwise_affine=True) if cross_attn_norm else nn.Identity()
        self.cross_attn = CrossAttention(dim, num_heads, eps, backend)
        self.norm2 = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(self, x: Tensor, t_mod: Tensor, context: Tensor, ctx: AttentionContext) -> Tensor:
        """x (B, N, C), t_mod (B, 1, 6, C) or per token (B, N, 6, C), context (B, L, C) -> (B, N, C)."""
        modulation = self.modulation.float().unsqueeze(1) + t_mod.float()  # (B, 1 or N, 6, C)
        shift_a, scale_a, gate_a, shift_f, scale_f, gate_f = modulation.unbind(2)
        y = self.self_attn((self.norm1(x).float() * (1 + scale_a) + shift_a).to(x.dtype), ctx)
        x = x + (y.float() * gate_a).to(x.dtype)
        x = x + self.cross_attn(self.norm3(x), context)
        y = self.ffn((self.norm2(x).float() * (1 + scale_f) + shift_f).to(x.dtype))
        return x + (y.float() * gate_f).to(x.dtype)
