"""Hierarchical local attention: coarse windows on a 2× compressed latent (UltraGen's hierarchical branch)."""

from __future__ import annotations

from functools import partial

from torch import Tensor

from ultragen.models.attention.base import AttentionBackend, AttentionContext, AttentionCost, VideoGrid, windows_maps
from ultragen.models.attention.global_compressed import GlobalCompressedAttention
from ultragen.models.attention.options import (
    Compression,
    CompressionOptions,
    LoRAOptions,
    Padding,
    PlaneFit,
    WindowOptions,
    counts_text,
)
from ultragen.models.attention.window import attend_windows, window_shapes


class HierarchicalAttention(GlobalCompressedAttention):
    """Depthwise ↓factor, coarse spatial windows (per-layer list) with the branch's LoRA, bilinear ↑, Conv3d.

    The compressed global branch with its attention split into windows (it shares its options and weights layout).

    The coarse window grid cycles by absolute layer index (release `[[2, 2], [3, 3]]`); the upsampling
    goes straight from the coarse plane to the full (H, W).
    """

    default_compression = CompressionOptions(factor=2)
    default_windows = WindowOptions(counts=((2, 2), (3, 3)))

    def __init__(
        self,
        dim: int,
        num_heads: int,
        layer_idx: int,
        freq_dim: int = 256,
        backend: AttentionBackend | str = "sdpa",
        *,
        compression: CompressionOptions | None = None,
        windows: WindowOptions | None = None,
        lora: LoRAOptions | None = None,
        padding: Padding | None = None,
    ):
        super().__init__(
            dim, num_heads, layer_idx, freq_dim, backend, compression=compression, lora=lora, padding=padding
        )
        self.windows = (windows or self.default_windows).check_size(2)

    @property
    def window_grid(self) -> tuple[int, int]:
        """(rows, cols) coarse window counts of this layer."""
        return self.windows.at(self.layer_idx)

    def fit(self, grid: VideoGrid) -> tuple[Compression, PlaneFit]:
        """Compression of `grid` and the window fit of the compressed plane."""
        plan = self.plan(grid)
        fit = PlaneFit.plan(plan.compressed, self.window_grid, self.padding.policy, self.padding.antialias,
                            "coarse window grid")
        return plan, fit

    def attend(self, attn, x: Tensor, ctx: AttentionContext) -> tuple[Tensor, Compression]:
        """Windowed attention output on the coarse plane (`fit.source`), (B, T, h', w', C), and the compression."""
        b, _, c = x.shape
        plan, fit = self.fit(ctx.grid)
        z = plan.compress(x.reshape(b, *ctx.grid, c), self.down)  # (B, T, h', w', C)
        scale, offset = self.rope_affine
        out = attend_windows(
            z, partial(self.project, attn), fit, self.window_grid, ctx.rope, self.windows.rope, self.backend,
            rope_scale=scale, rope_offset=offset,
        )  # (B, N_coarse, C) on fit.source
        return self.output_delta(out).reshape(b, *fit.source, c), plan

    def cost(self, grid: VideoGrid) -> AttentionCost:
        plan, fit = self.fit(grid)
        maps = windows_maps(self.dim, window_shapes(fit.work, (1, *self.window_grid)))
        return self.plane_cost(plan, fit.work.numel, maps)

    def describe(self) -> str:
        return f"{type(self).__name__}[{counts_text(self.window_grid)}]"

    def extra_repr(self) -> str:
        windows = self.windows.describe(self.layer_idx)
        return f"windows={windows}, window_rope={self.windows.rope}, {super().extra_repr()}"
