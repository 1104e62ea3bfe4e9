"""Full 3D self-attention over all tokens: the reference every other strategy is tested against."""

from __future__ import annotations

from torch import Tensor

from ultragen.models.attention.base import AttentionContext, AttentionCost, AttentionStrategy, VideoGrid
from ultragen.models.rope import apply_rope


class FullAttention(AttentionStrategy):
    """Wan2.1 self-attention: global 3D RoPE, one attention over all N tokens."""

    def forward(self, attn, x: Tensor, ctx: AttentionContext) -> Tensor:
        q, k, v = attn.qkv(x)  # (B, N, H, D) each
        rope = ctx.grid_rope(x.device)
        return self.backend(apply_rope(q, rope), apply_rope(k, rope), v)

    def cost(self, grid: VideoGrid) -> AttentionCost:
        n, d = grid.numel, self.dim
        return AttentionCost(4.0 * n * n * d, 6.0 * n * d * d)
