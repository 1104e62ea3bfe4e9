"""Adaptive block-sparse attention (NABLA): key blocks chosen per query block from a mean-pooled attention map."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

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
    sliding_tile_blocks,
    tile_layout,
    tile_major_qkv,
)


def mass(p: float) -> float:
    """One layer's cumulative-mass threshold, validated to lie in (0, 1]."""
    if not 0.0 < float(p) <= 1.0:
        raise ValueError(f"threshold entry {float(p)} is not in (0, 1]; use a mass like 0.9 (1.0 keeps every block)")
    return float(p)


def top_mass_blocks(probs: Tensor, threshold: float) -> Tensor:
    """(..., T) rows of probabilities -> bool (..., T): per row the smallest set of entries, largest first, whose
    cumulative mass reaches `threshold` (an entry is kept while the mass ranked above it is below the threshold)."""
    vals, idx = probs.sort(dim=-1, descending=True)
    keep = (vals.cumsum(-1) - vals) < threshold  # mass ranked above each entry
    return torch.zeros_like(keep).scatter(-1, idx, keep)


class AdaptiveBlockAttention(AttentionStrategy):
    """NABLA: tokens in 3D blocks; per head, each query block attends the key blocks carrying `threshold` of the mass
    of a block-pooled attention map, optionally united with a sliding-tile neighbourhood.

    `block` (t, h, w tokens), `threshold` (in (0, 1]) and `sliding_window` (t, h, w blocks, STA's neighbourhood,
    or None) are per-layer lists cycled by absolute layer index. q and k (global 3D RoPE applied) are mean-pooled per
    block; the pooled map softmax(q̄ k̄ᵀ / √head_dim) is computed per sample and head without gradient (the
    selection is discrete); threshold 1.0 keeps every block and skips the map. Attention then runs over the tokens
    of the kept blocks only. With the `flex` backend the BlockMask follows the data, so it is built on every call
    (from the block indices, no per-token mask) and never cached; the other backends run the gathered-block
    reference (keys copied per query block: for CPU and small grids). Padding error | replicate as in
    `SlidingTileAttention` (replicated edge tokens also enter the block means). No weights of its own.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        layer_idx: int,
        freq_dim: int = 256,
        backend: AttentionBackend | str = "sdpa",
        *,
        block: Sequence[Sequence[int]] = ((4, 8, 8),),
        threshold: Sequence[float] = (0.9,),
        sliding_window: Sequence[Sequence[int]] | None = None,
        padding: Padding | None = None,
    ):
        super().__init__(dim, num_heads, layer_idx, freq_dim, backend)
        self.block = layer_schedule("block", block, block_entry("block", "token counts"))
        self.threshold = layer_schedule("threshold", threshold, mass)
        self.sliding_window = None
        if sliding_window is not None:
            self.sliding_window = layer_schedule(
                "sliding_window", sliding_window, block_entry("sliding_window", "block counts")
            )
        self.padding = (padding or Padding()).without_resizing("blocks")

    @property
    def layer_block(self) -> tuple[int, int, int]:
        """(t, h, w) tokens per block in this layer."""
        return cycle(self.block, self.layer_idx)

    @property
    def layer_threshold(self) -> float:
        """Cumulative pooled-attention mass each query block keeps in this layer."""
        return cycle(self.threshold, self.layer_idx)

    @property
    def layer_window(self) -> tuple[int, int, int] | None:
        """(t, h, w) blocks of this layer's sliding-tile neighbourhood, or None."""
        return None if self.sliding_window is None else cycle(self.sliding_window, self.layer_idx)

    def what(self) -> str:
        return f"block {counts_text(self.layer_block)} of layer {self.layer_idx}"

    def layout(self, grid: VideoGrid, device: torch.device | str = "cpu") -> TileLayout:
        """Block-major layout of `grid` (raises under padding error if the block does not divide it)."""
        work = block_fit(grid, self.layer_block, self.padding.policy, self.what())
        return tile_layout(grid, work, self.layer_block, str(device))

    def select(self, q: Tensor, k: Tensor, layout: TileLayout) -> Tensor:
        """Kept key blocks of each query block: q, k (B, N_work, H, D) block-major -> bool (B, H, T, T), or
        (1, 1, T, T) when the selection does not depend on the data (threshold 1)."""
        t, device = layout.tiles, q.device
        if self.layer_threshold >= 1.0:
            keep = torch.ones(1, 1, t, t, dtype=torch.bool, device=device)
        else:
            with torch.no_grad():
                b, _, h, d = q.shape
                qb, kb = (x.float().view(b, t, layout.volume, h, d).mean(2) for x in (q, k))  # (B, T, H, D)
                probs = (torch.einsum("bihd,bjhd->bhij", qb, kb) / math.sqrt(d)).softmax(-1)  # (B, H, T, T)
                keep = top_mass_blocks(probs, self.layer_threshold)
        if self.layer_window is not None:
            keep = keep | sliding_tile_blocks(layout.counts, self.layer_window, str(device))
        return keep

    def forward(self, attn, x: Tensor, ctx: AttentionContext) -> Tensor:
        layout = self.layout(ctx.grid, x.device)
        q, k, v = tile_major_qkv(attn, x, ctx, layout)  # (B, N_work, H, D)
        keep = self.select(q, k, layout)
        if self.backend.name == "flex":
            check_flex_block(layout.volume, self.what())
            out = self.backend(q, k, v, block_mask=block_mask_from_blocks(keep, layout.volume))
        else:
            out = gathered_block_attention(q, k, v, keep, layout.volume, self.backend)
        return layout.scatter(out)  # (B, N, C)

    def overhead(self, grid: VideoGrid) -> float:
        """FLOPs besides the kept blocks' maps: q/k/v projections 6 · N · D² on the unpadded grid; below threshold 1
        also the block means (N_work · D additions each for q and k) and the pooled scores 2 · T² · D (softmax,
        sort and cumulative sum are not counted)."""
        work = block_fit(grid, self.layer_block, self.padding.policy, self.what())
        other = 6.0 * grid.numel * self.dim**2
        if self.layer_threshold < 1.0:
            blocks = work.numel // math.prod(self.layer_block)
            other += 2.0 * work.numel * self.dim + 2.0 * blocks**2 * self.dim
        return other

    def cost(self, grid: VideoGrid) -> AttentionCost:
        """Upper bound: the selection depends on the data, so maps count every block pair of the padded grid,
        4 · N_work² · D, as the kernel does when every block is kept (always so at threshold 1); `selection_cost`
        counts an actual selection."""
        work = block_fit(grid, self.layer_block, self.padding.policy, self.what())
        return AttentionCost(4.0 * work.numel**2 * self.dim, self.overhead(grid))

    def selection_cost(self, grid: VideoGrid, keep: Tensor) -> AttentionCost:
        """FLOPs per sample of a selection `keep` (B or 1, H or 1, T, T) from `select`: each kept (query block, key
        block) pair of a head costs 4 · volume² · head_dim; averaged over the batch."""
        per_head = self.num_heads // keep.shape[1]
        pairs = keep.sum().item() * per_head / keep.shape[0]
        return AttentionCost(4.0 * pairs * math.prod(self.layer_block) ** 2 * self.head_dim, self.overhead(grid))

    def describe(self) -> str:
        window = "" if self.layer_window is None else f", window {counts_text(self.layer_window)}"
        block = counts_text(self.layer_block)
        return f"{type(self).__name__}[block {block}, threshold {self.layer_threshold:g}{window}]"

    def extra_repr(self) -> str:
        blocks = ", ".join(map(counts_text, self.block))
        thresholds = ", ".join(f"{p:g}" for p in self.threshold)
        window = "none" if self.sliding_window is None else ", ".join(map(counts_text, self.sliding_window))
        return (
            f"block={counts_text(self.layer_block)} (cycle [{blocks}]), threshold={self.layer_threshold:g} "
            f"(cycle [{thresholds}]), sliding_window=[{window}], padding={self.padding.policy}, {super().extra_repr()}"
        )
