"""Sliding-tile attention (STA, FastVideo) and the tile machinery shared with the block-sparse strategies.

Tiles are expressed as one token order ("tile-major": tiles in (t, h, w) order, the tokens of a tile in (t, h, w)
order) plus its inverse, so a tile is a contiguous run of `volume` tokens. The CPU reference gathers each query
tile's key tiles and runs the backend over them; the `flex` backend runs FlexAttention with a BlockMask whose block
is one tile, so it skips the tiles a query tile does not see.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn.attention.flex_attention import BlockMask

from ultragen.models.attention.base import (
    AttentionBackend,
    AttentionContext,
    AttentionCost,
    AttentionStrategy,
    VideoGrid,
    check_flex_block,
)
from ultragen.models.attention.options import Padding, block_entry, block_fit, counts_text, cycle, layer_schedule
from ultragen.models.rope import apply_rope

#################################################################################
#                                  Tile layout                                  #
#################################################################################


class TileLayout:
    """Tiles of `tile` tokens over `grid` as one tile-major token order.

    `work` is `grid` padded to whole tiles (`block_fit`); padding repeats its last frame, row and column:
    a padded token is a copy of the nearest edge token (as query its output is dropped; as key and value it counts
    like any other token). `order[j]`: grid token of the j-th tile-major token; `inverse[i]`: position in `order` of
    grid token i; `tile_of[i]`: tile of grid token i; `counts`: tiles per axis; `tiles`: their number; `volume`:
    tokens per tile.
    """

    def __init__(self, grid: VideoGrid, work: VideoGrid, tile: tuple[int, int, int], device: str):
        self.grid, self.work, self.tile = grid, work, tile
        self.counts = tuple(n // s for n, s in zip(work, tile))
        self.tiles = math.prod(self.counts)
        self.volume = math.prod(tile)
        (nt, nh, nw), (st, sh, sw) = self.counts, tile
        flat = torch.arange(work.numel).view(nt, st, nh, sh, nw, sw).permute(0, 2, 4, 1, 3, 5).reshape(-1)
        t, r, c = flat // (work.h * work.w), flat // work.w % work.h, flat % work.w  # work coordinates, tile-major
        order = (t.clamp(max=grid.t - 1) * grid.h + r.clamp(max=grid.h - 1)) * grid.w + c.clamp(max=grid.w - 1)
        real = (t < grid.t) & (r < grid.h) & (c < grid.w)
        inverse = torch.empty(grid.numel, dtype=torch.long)
        inverse[order[real]] = torch.arange(work.numel)[real]
        self.identity = bool(work == grid and torch.equal(order, torch.arange(grid.numel)))
        self.order = order.to(device)
        self.inverse = inverse.to(device)
        self.tile_of = (inverse // self.volume).to(device)

    def gather(self, x: Tensor) -> Tensor:
        """(B, N, ...) in grid order -> (B, N_work, ...) tile-major."""
        return x if self.identity else x.index_select(1, self.order)

    def scatter(self, x: Tensor) -> Tensor:
        """(B, N_work, ...) tile-major -> (B, N, ...) in grid order (padded tokens dropped)."""
        return x if self.identity else x.index_select(1, self.inverse)


@functools.lru_cache(maxsize=16)
def tile_layout(grid: VideoGrid, work: VideoGrid, tile: tuple[int, int, int], device: str) -> TileLayout:
    """Cached `TileLayout` (index tensors on `device`; 16 most recent grids and tiles)."""
    return TileLayout(grid, work, tile, device)


def tile_major_qkv(attn, x: Tensor, ctx: AttentionContext, layout: TileLayout) -> tuple[Tensor, Tensor, Tensor]:
    """attn's q, k (global 3D RoPE) and v of x (B, N, C), tile-major on `layout.work`: (B, N_work, H, D) each."""
    q, k, v = attn.qkv(x)  # (B, N, H, D) each
    rope = ctx.grid_rope(x.device)
    return layout.gather(apply_rope(q, rope)), layout.gather(apply_rope(k, rope)), layout.gather(v)


#################################################################################
#                           Sliding-tile neighbourhoods                         #
#################################################################################


def window_axis(n: int, w: int) -> Tensor:
    """(n, n) bool: query tile i sees key tile j along one axis of n tiles with a window of w tiles.

    The window starts at clamp(i - w // 2, 0, n - w), so it is centred where it fits and shifted inward at the
    borders: every query tile sees min(w, n) tiles (an even w reaches one tile further back than forward)."""
    w = min(w, n)
    start = (torch.arange(n) - w // 2).clamp(0, n - w)[:, None]
    j = torch.arange(n)[None]
    return (j >= start) & (j < start + w)


def sliding_tile_neighbours(counts: Sequence[int], window: Sequence[int]) -> Tensor:
    """(T, T) bool over the tiles of a (nt, nh, nw) tile grid, tile-major: which key tiles each query tile sees."""
    at, ah, aw = (window_axis(n, w) for n, w in zip(counts, window))
    keep = at[:, None, None, :, None, None] & ah[None, :, None, None, :, None] & aw[None, None, :, None, None, :]
    return keep.reshape(math.prod(counts), math.prod(counts))


@functools.lru_cache(maxsize=16)
def sliding_tile_blocks(counts: tuple[int, int, int], window: tuple[int, int, int], device: str) -> Tensor:
    """Cached `sliding_tile_neighbours` as a (1, 1, T, T) block selection on `device`."""
    return sliding_tile_neighbours(counts, window)[None, None].to(device)


def block_mask_from_blocks(keep: Tensor, volume: int) -> BlockMask:
    """FlexAttention BlockMask of a block selection `keep` (B or 1, H or 1, T, T) over blocks of `volume` tokens.

    Every kept block is a full block (the kernels skip the others and never evaluate the mask inside a kept one); the
    mask_mod states the same rule per token, for FlexAttention's uncompiled reference and `to_dense`. Built from
    the block indices directly (`BlockMask.from_kv_blocks`), so no per-token mask is evaluated: equal to
    `create_block_mask` over that mask_mod with BLOCK_SIZE=volume (a test pins this)."""
    counts = keep.sum(-1, dtype=torch.int32)  # (B, H, T)
    indices = keep.to(torch.int32).argsort(dim=-1, descending=True, stable=True).to(torch.int32)  # kept blocks first
    n = keep.shape[-1] * volume
    if keep.shape[:2] == (1, 1):
        blocks = keep[0, 0]

        def mask_mod(b, h, q_idx, kv_idx):
            return blocks[q_idx // volume, kv_idx // volume]
    else:

        def mask_mod(b, h, q_idx, kv_idx):
            return keep[b, h, q_idx // volume, kv_idx // volume]

    # The partial-block tensors must be distinct from the full ones: compiled kernels fail on aliased inputs.
    return BlockMask.from_kv_blocks(
        torch.zeros_like(counts), torch.zeros_like(indices), counts, indices,
        BLOCK_SIZE=volume, mask_mod=mask_mod, seq_lengths=(n, n),
    )


@functools.lru_cache(maxsize=16)
def sliding_tile_block_mask(
    counts: tuple[int, int, int], window: tuple[int, int, int], volume: int, device: str
) -> BlockMask:
    """Cached BlockMask of the sliding-tile neighbourhood (one per grid, tile, window and device)."""
    return block_mask_from_blocks(sliding_tile_blocks(counts, window, device), volume)


#################################################################################
#                             Gathered block attention                          #
#################################################################################


def gathered_block_attention(q: Tensor, k: Tensor, v: Tensor, keep: Tensor, volume: int, backend: AttentionBackend):
    """q, k, v (B, N, H, D) block-major (N = T · volume); keep (B or 1, H or 1, T, T) bool -> (B, N, H·D).

    Query block i (of sample b, head h) attends the tokens of the key blocks j with keep[b, h, i, j]. Query blocks
    with the same number of kept blocks share one backend call over their gathered keys, so the work is that of
    the kept blocks. Every query block must keep at least one block.
    """
    b, n, h, d = q.shape
    t, mh = n // volume, keep.shape[1]
    keep = keep.expand(b, mh, t, t)

    def split(x: Tensor) -> Tensor:  # (B, N, H, D) -> (B, mh, T, volume, H / mh, D)
        return x.view(b, t, volume, mh, h // mh, d).permute(0, 3, 1, 2, 4, 5)

    qs, ks, vs = split(q), split(k), split(v)
    kept = keep.sum(-1)  # (B, mh, T)
    outs, rows = [], []
    for count in kept.unique().tolist():
        bi, hi, ti = (kept == count).nonzero(as_tuple=True)  # (G,) each
        cols = keep[bi, hi, ti].nonzero(as_tuple=True)[1].view(-1, count)  # (G, count) kept key blocks
        kg, vg = (x[bi[:, None], hi[:, None], cols].flatten(1, 2) for x in (ks, vs))  # (G, count·volume, H/mh, D)
        outs.append(backend(qs[bi, hi, ti], kg, vg))  # (G, volume, H/mh·D)
        rows.append((bi * mh + hi) * t + ti)
    out = torch.cat(outs)[torch.cat(rows).argsort()]  # (B·mh·T, volume, H/mh·D), one row per query block
    return out.view(b, mh, t, volume, h // mh, d).permute(0, 2, 3, 1, 4, 5).reshape(b, n, h * d)


#################################################################################
#                             Sliding-tile attention                            #
#################################################################################


class SlidingTileAttention(AttentionStrategy):
    """STA: 3D tiles of `tile` tokens; each query tile attends the key tiles in a `window` of tiles around it.

    `tile` (t, h, w tokens) and `window` (t, h, w tiles) are per-layer lists cycled by absolute layer index. Border
    handling follows STA: the window is centred on the query tile where it fits and shifted inward at the borders
    (not clipped), so every query tile attends the same min(window, tiles) key tiles per axis. Global 3D RoPE is
    applied before tiling. Grids not divisible by the tile raise under pad=error; pad=replicate pads the grid to
    whole tiles by repeating its last frame, row and column (padded tokens are keys and values like any other;
    their query outputs are dropped). The `flex` backend runs FlexAttention with a BlockMask of one block per tile,
    cached per grid; the other backends run the gathered-tile reference (keys copied per query tile: for CPU and
    small grids). No weights of its own.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        layer_idx: int,
        freq_dim: int = 256,
        backend: AttentionBackend | str = "sdpa",
        *,
        tile: Sequence[Sequence[int]] = ((4, 8, 8),),
        window: Sequence[Sequence[int]] = ((3, 3, 3),),
        padding: Padding | None = None,
    ):
        super().__init__(dim, num_heads, layer_idx, freq_dim, backend)
        self.tile = layer_schedule("tile", tile, block_entry("tile", "token counts"))
        self.window = layer_schedule("window", window, block_entry("window", "tile counts"))
        self.padding = (padding or Padding()).without_resizing("tiles")

    @property
    def layer_tile(self) -> tuple[int, int, int]:
        """(t, h, w) tokens per tile in this layer."""
        return cycle(self.tile, self.layer_idx)

    @property
    def layer_window(self) -> tuple[int, int, int]:
        """(t, h, w) tiles per window in this layer."""
        return cycle(self.window, self.layer_idx)

    def what(self) -> str:
        return f"tile {counts_text(self.layer_tile)} of layer {self.layer_idx}"

    def layout(self, grid: VideoGrid, device: torch.device | str = "cpu") -> TileLayout:
        """Tile-major layout of `grid` (raises under padding error if the tile does not divide it)."""
        work = block_fit(grid, self.layer_tile, self.padding.policy, self.what())
        return tile_layout(grid, work, self.layer_tile, str(device))

    def forward(self, attn, x: Tensor, ctx: AttentionContext) -> Tensor:
        layout = self.layout(ctx.grid, x.device)
        q, k, v = tile_major_qkv(attn, x, ctx, layout)  # (B, N_work, H, D)
        device = str(x.device)
        if self.backend.name == "flex":
            check_flex_block(layout.volume, self.what())
            mask = sliding_tile_block_mask(layout.counts, self.layer_window, layout.volume, device)
            out = self.backend(q, k, v, block_mask=mask)
        else:
            keep = sliding_tile_blocks(layout.counts, self.layer_window, device)
            out = gathered_block_attention(q, k, v, keep, layout.volume, self.backend)
        return layout.scatter(out)  # (B, N, C)

    def cost(self, grid: VideoGrid) -> AttentionCost:
        """What the block-sparse kernel computes: every query tile of the padded grid against its whole key tiles,
        4 · N_work · (key tiles per query tile) · volume · D; q/k/v projections 6 · N · D² on the unpadded
        grid."""
        work = block_fit(grid, self.layer_tile, self.padding.policy, self.what())
        counts = (n // s for n, s in zip(work, self.layer_tile))
        key_tiles = math.prod(min(w, n) for w, n in zip(self.layer_window, counts))
        pairs = work.numel * key_tiles * math.prod(self.layer_tile)
        return AttentionCost(4.0 * pairs * self.dim, 6.0 * grid.numel * self.dim**2)

    def describe(self) -> str:
        return f"{type(self).__name__}[tile {counts_text(self.layer_tile)}, window {counts_text(self.layer_window)}]"

    def extra_repr(self) -> str:
        tiles, windows = (", ".join(map(counts_text, c)) for c in (self.tile, self.window))
        return (
            f"tile={counts_text(self.layer_tile)} (cycle [{tiles}]), "
            f"window={counts_text(self.layer_window)} (cycle [{windows}]), "
            f"padding={self.padding.policy}, {super().extra_repr()}"
        )
