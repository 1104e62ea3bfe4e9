"""Top-k block sparse attention (VSA, Zhang et al. 2025): coarse attention over 3D cubes picks where to attend finely.

Tokens are grouped into cubes of `cube` = (t, h, w) tokens and put in one cube-major order (cached per grid). A
coarse stage attends between the cube means of q, k and v; per query cube and head it keeps the `k` key cubes with
the highest coarse scores, and every query token attends at token level to all tokens of those cubes. The coarse
output, broadcast to the tokens of its cube, is added through a zero-initialised gate: out = fine + gate(x) · coarse,
as FastVideo's `to_gate_compress` does, so a fresh strategy is pure fine sparse attention.

The fine stage runs as FlexAttention with a per-step BlockMask (one block per cube) under backend `flex`, and as
attention over the gathered selected cubes with any other backend (the CPU reference); both compute the same thing.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
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
from ultragen.models.init import init_leaf, zero_linear
from ultragen.models.rope import apply_rope

#################################################################################
#                                Options and fit                                #
#################################################################################


def k_entry(k: int) -> int:
    """One layer's count of key cubes kept per query cube, validated."""
    if int(k) < 1:
        raise ValueError(f"k={k} must be positive; each query cube keeps k key cubes (k >= 1)")
    return int(k)


#################################################################################
#                                  Cube layout                                  #
#################################################################################


class CubeLayout:
    """Cubes of `cube` tokens over `grid` as one cube-major token order on the padded grid `work`.

    Each axis is padded at its far end to whole cubes; a padded position holds the token at its coordinates clamped
    to the grid (replicate). Cubes are numbered in (t, h, w) order of the cube grid `counts`, tokens inside a cube
    in (t, h, w) order. `order[j]`: source token of cube-major token j; `inverse[i]`: position in `order` of source
    token i; `cube_of[i]`: cube of source token i.
    """

    def __init__(self, grid: VideoGrid, cube: tuple[int, int, int], device: str):
        self.grid, self.cube = grid, cube
        self.counts = nt, nh, nw = tuple(math.ceil(n / c) for n, c in zip(grid, cube))
        self.work = work = VideoGrid(*(n * c for n, c in zip(self.counts, cube)))
        self.num_cubes, self.volume = nt * nh * nw, math.prod(cube)
        ct, ch, cw = cube
        t, h, w = torch.meshgrid(*(torch.arange(n).clamp(max=s - 1) for n, s in zip(work, grid)), indexing="ij")
        source = (t * grid.h + h) * grid.w + w  # (work.t, work.h, work.w): source token of each padded position
        order = source.view(nt, ct, nh, ch, nw, cw).permute(0, 2, 4, 1, 3, 5).reshape(-1)
        position = torch.arange(work.numel).view(nt, nh, nw, ct, ch, cw).permute(0, 3, 1, 4, 2, 5)
        inverse = position.reshape(*work)[: grid.t, : grid.h, : grid.w].reshape(-1)
        self.identity = bool(work == grid and torch.equal(order, torch.arange(order.numel())))
        self.order = order.to(device)
        self.inverse = inverse.to(device)
        self.cube_of = (inverse // self.volume).to(device)


@functools.lru_cache(maxsize=16)
def cube_layout(grid: VideoGrid, cube: tuple[int, int, int], device: str = "cpu") -> CubeLayout:
    """Cached `CubeLayout` (index tensors on `device`; 16 most recent grids/cubes)."""
    return CubeLayout(grid, cube, device)


def cube_means(x: Tensor, layout: CubeLayout) -> Tensor:
    """Cube-major x (B, N_work, H, D) -> float32 cube means (B, H, M, D)."""
    b, _, h, d = x.shape
    return x.reshape(b, layout.num_cubes, layout.volume, h, d).mean(2, dtype=torch.float32).transpose(1, 2)


def cube_block_mask(selected: Tensor, volume: int) -> BlockMask:
    """FlexAttention BlockMask over the cube-major sequence, one block per cube: query cube m of (batch, head) reads
    exactly the key cubes `selected[b, h, m]` (B, H, M, k), each as a full block.

    It is what `create_block_mask` returns for the mask_mod below, built with `BlockMask.from_kv_blocks` from the
    indices instead of evaluating mask_mod on all N² token pairs of every head. Full blocks skip mask_mod in the
    kernels; mask_mod gives the same mask to paths that evaluate it per element (eager flex_attention). Index
    tensors have one column per cube, as create_block_mask's (the CPU kernel requires it); entries past the block
    counts are unused. The empty partial-block indices are a tensor of their own: inductor's CPU template fails to
    compile when they alias the full ones.
    """
    b, h, m, k = selected.shape
    allowed = torch.zeros(b, h, m, m, dtype=torch.bool, device=selected.device).scatter_(-1, selected, True)
    indices = torch.zeros(b, h, m, m, dtype=torch.int32, device=selected.device)
    indices[..., :k] = selected.sort(dim=-1).values
    counts = torch.full((b, h, m), k, dtype=torch.int32, device=selected.device)

    def mask_mod(b, h, q_idx, kv_idx):
        return allowed[b, h, q_idx // volume, kv_idx // volume]

    n = m * volume
    return BlockMask.from_kv_blocks(
        torch.zeros_like(counts), torch.zeros_like(indices), counts, indices, BLOCK_SIZE=volume, mask_mod=mask_mod,
        seq_lengths=(n, n),
    )


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

    def layout(self, grid: VideoGrid, device: torch.device | str = "cpu") -> CubeLayout:
        """This layer's cube layout on `grid` (raises under padding error if the cube does not divide it)."""
        block_fit(grid, self.cube, self.padding.policy, self.what())
        return cube_layout(grid, self.cube, str(device))

    def cube_qkv(self, attn, x: Tensor, ctx: AttentionContext) -> tuple[CubeLayout, Tensor, Tensor, Tensor]:
        """The layout and q, k (with global RoPE) and v in cube-major order, (B, N_work, H, D) each."""
        layout = self.layout(ctx.grid, x.device)
        q, k, v = attn.qkv(x)  # (B, N, H, D)
        rope = ctx.grid_rope(x.device)
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        if not layout.identity:
            q, k, v = (t.index_select(1, layout.order) for t in (q, k, v))
        return layout, q, k, v

    def select(self, scores: Tensor) -> Tensor:
        """Coarse scores (B, H, M, M) -> indices (B, H, M, k) of the key cubes each query cube keeps."""
        return scores.topk(min(self.top_k, scores.shape[-1]), dim=-1).indices

    def fine(self, q: Tensor, k: Tensor, v: Tensor, selected: Tensor, layout: CubeLayout) -> Tensor:
        """Cube-major q, k, v (B, N_work, H, D), each query token over all tokens of its cube's selected key cubes
        -> (B, N_work, H·D)."""
        if self.backend.name == "flex":
            size = check_flex_block(math.prod(layout.cube), f"cube {counts_text(layout.cube)}")
            return self.backend(q, k, v, block_mask=cube_block_mask(selected, size))
        b, n, h, d = q.shape
        m, vol, kept = layout.num_cubes, layout.volume, selected.shape[-1]
        batch = torch.arange(b, device=q.device)[:, None, None, None]
        heads = torch.arange(h, device=q.device)[None, :, None, None]

        def gather(t: Tensor) -> Tensor:  # (B, N_work, H, D) -> (B·M, k·V, H, D): every query cube's selected cubes
            cubes = t.reshape(b, m, vol, h, d).permute(0, 3, 1, 2, 4)  # (B, H, M, V, D)
            picked = cubes[batch, heads, selected]  # (B, H, M, k, V, D)
            return picked.permute(0, 2, 3, 4, 1, 5).reshape(b * m, kept * vol, h, d)

        out = self.backend(q.reshape(b * m, vol, h, d), gather(k), gather(v))  # (B·M, V, H·D)
        return out.reshape(b, n, h * d)

    def forward(self, attn, x: Tensor, ctx: AttentionContext) -> Tensor:
        layout, q, k, v = self.cube_qkv(attn, x, ctx)
        qc, kc = cube_means(q, layout), cube_means(k, layout)  # (B, H, M, D) float32
        scores = qc @ kc.transpose(-1, -2) * self.head_dim**-0.5  # (B, H, M, M)
        out = self.fine(q, k, v, self.select(scores), layout)  # (B, N_work, C)
        if not layout.identity:
            out = out.index_select(1, layout.inverse)  # (B, N, C)
        if self.gate is None:
            return out
        coarse = scores.softmax(-1) @ cube_means(v, layout)  # (B, H, M, D)
        coarse = coarse.transpose(1, 2).flatten(2).to(x.dtype).index_select(1, layout.cube_of)  # (B, N, C)
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
        return f"{type(self).__name__}[{'x'.join(map(str, self.cube))} k={self.top_k}]"

    def extra_repr(self) -> str:
        cubes = ", ".join("x".join(map(str, c)) for c in self.cubes)
        return (
            f"cube={'x'.join(map(str, self.cube))} (cycle [{cubes}]), k={self.top_k} (cycle {list(self.ks)}), "
            f"padding={self.padding.policy}, coarse_gate={self.gate is not None}, {super().extra_repr()}"
        )
