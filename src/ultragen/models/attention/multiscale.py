"""T3-Video's multi-scale window attention: weight-shared close and remote 3D windows, averaged; no new weights."""

from __future__ import annotations

from torch import Tensor

from ultragen.models.attention.base import (
    AttentionBackend,
    AttentionContext,
    AttentionCost,
    AttentionStrategy,
    VideoGrid,
    windows_maps,
)
from ultragen.models.attention.options import PlaneFit, WindowOptions, counts_text
from ultragen.models.attention.window import grouped_attention, window_layout, window_shapes
from ultragen.models.rope import apply_rope


class MultiScaleWindowAttention(AttentionStrategy):
    """Close (contiguous) and remote (strided) windows share q/k/v; the two results are averaged.

    `windows.counts` lists per-layer window counts (n_t, n_h, n_w), cycled by absolute layer index; a window is
    grid / counts. Global 3D RoPE is applied before windowing, so tokens keep their absolute positions (`windows.rope`
    must be `global`); the windows do not shift.
    Remote window j collects the tokens whose index along each axis is ≡ j (mod n).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        layer_idx: int,
        freq_dim: int = 256,
        backend: AttentionBackend | str = "sdpa",
        *,
        windows: WindowOptions,
    ):
        super().__init__(dim, num_heads, layer_idx, freq_dim, backend)
        self.windows = windows.check_size(3)
        if windows.rope != "global" or any(windows.shifts):
            raise ValueError(
                f"windows.rope={windows.rope!r}, shifts={list(windows.shifts)}: T3 windows keep global RoPE and do "
                "not shift; leave rope and shifts at their defaults"
            )

    @property
    def counts(self) -> tuple[int, int, int]:
        """(n_t, n_h, n_w) window counts of this layer."""
        return self.windows.at(self.layer_idx)

    def check(self, grid: VideoGrid) -> PlaneFit:
        """Exact fit of `grid`; raises naming the grid and counts if they do not divide."""
        if any(n % c for n, c in zip(grid, self.counts)):
            raise ValueError(
                f"token grid {grid} (TxHxW) is not divisible by the window counts "
                f"{counts_text(self.counts)} of layer {self.layer_idx}; choose counts that divide every axis"
            )
        return PlaneFit(grid, grid, "error")

    def cost(self, grid: VideoGrid) -> AttentionCost:
        """Close and remote windows have the same shapes: twice one partition's maps."""
        self.check(grid)
        maps = 2 * windows_maps(self.dim, window_shapes(grid, self.counts))
        return AttentionCost(maps, 6.0 * grid.numel * self.dim**2)

    def describe(self) -> str:
        return f"{type(self).__name__}[{counts_text(self.counts)}]"

    def forward(self, attn, x: Tensor, ctx: AttentionContext) -> Tensor:
        fit = self.check(ctx.grid)
        q, k, v = attn.qkv(x)  # (B, N, H, D)
        rope = ctx.grid_rope(x.device)
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        outs = []
        for strided in (False, True):
            layout = window_layout(fit, self.counts, strided, False, str(x.device))
            if layout.identity:
                outs.append(grouped_attention(q, k, v, layout.groups, self.backend))
                continue
            qw, kw, vw = (t.index_select(1, layout.order) for t in (q, k, v))
            outs.append(grouped_attention(qw, kw, vw, layout.groups, self.backend).index_select(1, layout.inverse))
        return (outs[0] + outs[1]) * 0.5

    def extra_repr(self) -> str:
        return f"counts={self.windows.describe(self.layer_idx)}, {super().extra_repr()}"
