"""Top-k block sparse attention (VSA, Zhang et al. 2025): coarse attention over 3D cubes picks where to attend finely.

Tokens are grouped into cubes of `cube` = (t, h, w) tokens and put in one cube-major order (the tile layout of
`sliding_tile.py`, cached per grid). A
coarse stage attends between the cube means of q, k and v; per query cube and head it keeps the `k` key cubes with
the highest coarse scores, and every query token attends at token level to all tokens of those cubes. The coarse
output, broadcast to the tokens of its cube, is added through a zero-initialised gate: out = fine + gate(x) · coarse,
as FastVideo's `to_gate_compress` does, so a fresh strategy is pure fine sparse attention.

The fine stage runs as FlexAttention with a per-step BlockMask (one block per cube) under backend `flex`, and as
attention over the gathered selected cubes with any other backend (the CPU reference); both compute the same thing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ultragen.models.attention.base import (
    AttentionBackend,
    AttentionContext,
    AttentionCost,
    AttentionStrategy,
    VideoGrid,
    check_flex_block,
)
from ultragen.models.attention.options import Padding, block_entry, block_fit, counts_text, cycle, layer_schedule
from ultragen.models.attention.sliding_tile import (
    TileLayout,
    block_mask_from_blocks,
    gathered_block_attention,
    tile_layout,
    tile_major_qkv,
)
from ultragen.models.init import init_leaf, zero_linear

#################################################################################
#                                Options and fit                                #
#################################################################################


def k_entry(k: int) -> int:
    """One layer's count of key cubes kept per query cube, validated."""
    if int(k) < 1:
        raise ValueError(f"k={k} must be positive; each query cube keeps k key cubes (k >= 1)")
    return int(k)


#################################################################################
#                                  Cube means                                   #
#################################################################################


def cube_means(x: Tensor, layout: TileLayout) -> Tensor:
    """Cube-major x (B, N_work, H, D) -> float32 cube means (B, H, M, D)."""
    b, _, h, d = x.shape
    return x.reshape(b, layout.tiles, layout.volume, h, d).mean(2, dtype=torch.float32).transpose(1, 2)


#################################################################################
#                                   Strategy                                    #
#################################################################################


class TopKBlockAttention(AttentionStrategy):
    """VSA-style attention: coarse attention over cube means selects the top-k key cubes of every query cube and
    head; tokens attend finely within them; the coarse output is added through a zero-initialised gate.

    `cube` (t, h, w tokens) and `k` are per-layer lists cycled by absolute layer index; a `k` at or above the number
    of cubes keeps all of them. Global 3D RoPE is applied before the cubes are formed. Coarse scores are
    q̄ k̄ᵀ/√d of the float32 cube means, per head; the selection is not differentiated, the coarse output is.

    `padding.policy`: `error` raises on grids not divisible by the cube; `replicate` pads each axis at its far end to
    whole cubes with copies of the edge tokens (their q, k, v, global RoPE positions included). The copies take part in
    the cube means and, as keys, in the fine and coarse attention of their cube (an edge token copied c times
    counts c times), as in the edge-padded grid; their outputs are dropped. On divisible grids nothing is padded.

    `coarse_gate`: add gate(x) · coarse, gate a Linear(dim, dim) of the layer input with zero weight and bias
    (FastVideo's `to_gate_compress`); false drops the coarse output (the coarse scores still select the cubes).
    With k covering all cubes and no gate this is full attention.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        layer_idx: int,
        freq_dim: int = 256,
        backend: AttentionBackend | str = "sdpa",
        *,
        cube: Sequence[Sequence[int]] = ((4, 4, 4),),
        k: Sequence[int] = (32,),
        padding: Padding | None = None,
        coarse_gate: bool = True,
    ):
        super().__init__(dim, num_heads, layer_idx, freq_dim, backend)
        self.cubes = layer_schedule("cube", cube, block_entry("cube", "token counts"))
        self.ks = layer_schedule("k", k, k_entry)
        self.padding = (padding or Padding()).without_resizing("cubes")
        self.gate = nn.Linear(dim, dim) if coarse_gate else None
        if self.gate is not None:
            init_leaf(self.gate, zero_linear)

    @property
    def cube(self) -> tuple[int, int, int]:
        """(t, h, w) tokens per cube in this layer."""
        return cycle(self.cubes, self.layer_idx)

    def what(self) -> str:
        return f"cube {counts_text(self.cube)} of layer {self.layer_idx}"

    @property
    def top_k(self) -> int:
        """Key cubes kept per query cube in this layer (all of them where there are fewer)."""
        return cycle(self.ks, self.layer_idx)

    def layout(self, grid: VideoGrid, device: torch.device | str = "cpu") -> TileLayout:
        """This layer's cube layout on `grid` (raises under padding error if the cube does not divide it)."""
        return tile_layout(grid, block_fit(grid, self.cube, self.padding.policy, self.what()), self.cube, str(device))

    def cube_qkv(self, attn, x: Tensor, ctx: AttentionContext) -> tuple[TileLayout, Tensor, Tensor, Tensor]:
        """The layout and q, k (with global RoPE) and v in cube-major order, (B, N_work, H, D) each."""
        layout = self.layout(ctx.grid, x.device)
        return (layout, *tile_major_qkv(attn, x, ctx, layout))

    def select(self, scores: Tensor) -> Tensor:
        """Coarse scores (B, H, M, M) -> indices (B, H, M, k) of the key cubes each query cube keeps."""
        return scores.topk(min(self.top_k, scores.shape[-1]), dim=-1).indices

    def fine(self, q: Tensor, k: Tensor, v: Tensor, selected: Tensor, layout: TileLayout) -> Tensor:
        """Cube-major q, k, v (B, N_work, H, D), each query token over all tokens of its cube's selected key cubes
        -> (B, N_work, H·D)."""
        keep = torch.zeros(*selected.shape[:-1], layout.tiles, dtype=torch.bool, device=selected.device)
        keep.scatter_(-1, selected, True)  # (B, H, M, M)
        if self.backend.name == "flex":
            size = check_flex_block(layout.volume, f"cube {counts_text(layout.tile)}")
            return self.backend(q, k, v, block_mask=block_mask_from_blocks(keep, size))
        return gathered_block_attention(q, k, v, keep, layout.volume, self.backend)

    def forward(self, attn, x: Tensor, ctx: AttentionContext) -> Tensor:
        layout, q, k, v = self.cube_qkv(attn, x, ctx)
        qc, kc = cube_means(q, layout), cube_means(k, layout)  # (B, H, M, D) float32
        scores = qc @ kc.transpose(-1, -2) * self.head_dim**-0.5  # (B, H, M, M)
        out = layout.scatter(self.fine(q, k, v, self.select(scores), layout))  # (B, N, C)
        if self.gate is None:
            return out
        coarse = scores.softmax(-1) @ cube_means(v, layout)  # (B, H, M, D)
        coarse = coarse.transpose(1, 2).flatten(2).to(x.dtype).index_select(1, layout.tile_of)  # (B, N, C)
        return out + self.gate(x) * coarse

    def cost(self, grid: VideoGrid) -> AttentionCost:
        """maps: QKᵀ and AV (4·D per pair) of the fine pairs on the padded grid, M·V queries × k·V keys, and of
        the coarse attention between the M cube means. other: the q/k/v projections (6·N·D²), the cube means of q,
        k and v (3·N_work·D additions) and, with the gate, its Linear (2·N·D²) and gate·coarse + fine (2·N·D)."""
        work = block_fit(grid, self.cube, self.padding.policy, self.what())
        n, d, vol = grid.numel, self.dim, math.prod(self.cube)
        m = work.numel // vol
        kept = min(self.top_k, m)
        maps = 4.0 * d * (m * vol * kept * vol + m * m)
        other = 6.0 * n * d * d + 3.0 * work.numel * d
        if self.gate is not None:
            other += 2.0 * n * d * d + 2.0 * n * d
        return AttentionCost(maps, other)

    def describe(self) -> str:
        return f"{type(self).__name__}[{counts_text(self.cube)} k={self.top_k}]"

    def extra_repr(self) -> str:
        cubes = ", ".join(counts_text(c) for c in self.cubes)
        return (
            f"cube={counts_text(self.cube)} (cycle [{cubes}]), k={self.top_k} (cycle {list(self.ks)}), "
            f"padding={self.padding.policy}, coarse_gate={self.gate is not None}, {super().extra_repr()}"
        )
