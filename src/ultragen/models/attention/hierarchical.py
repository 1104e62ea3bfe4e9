"""Hierarchical local attention: coarse windows on a 2× compressed latent (UltraGen's hierarchical branch)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from torch import Tensor

from ultragen.models.attention.base import AttentionBackend, AttentionContext, AttentionCost, VideoGrid, windows_maps
from ultragen.models.attention.global_compressed import (
    CompressedRope,
    Compression,
    GlobalCompressedAttention,
    KeyProjection,
    UpInit,
)
from ultragen.models.attention.window import (
    WINDOW_ROPES,
    PadPolicy,
    PlaneFit,
    WindowRope,
    attend_windows,
    check_choice,
    window_schedule,
    window_shapes,
)
from ultragen.models.lora import LoRAInit


class HierarchicalAttention(GlobalCompressedAttention):
    """Depthwise ↓factor, coarse spatial windows (per-layer list) with the branch's LoRA, bilinear ↑, Conv3d.

    The compressed global branch with its attention split into windows (it shares its options and weights layout).

    The coarse window grid cycles by absolute layer index (release `[[2, 2], [3, 3]]`); the upsampling
    goes straight from the coarse plane to the full (H, W).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        layer_idx: int,
        freq_dim: int = 256,
        backend: AttentionBackend | str = "sdpa",
        *,
        factor: int = 2,
        windows: Sequence[Sequence[int]] = ((2, 2), (3, 3)),
        window_rope: WindowRope = "global",
        lora_rank: int = 64,
        lora_targets: Sequence[str] = ("q", "k", "v"),
        lora_alpha: float | None = None,
        lora_bias: bool = False,
        lora_init_b: LoRAInit = "zero",
        key_proj: KeyProjection = "k",
        rope: CompressedRope = "grid",
        pad: PadPolicy = "error",
        antialias: bool = False,
        up_init: UpInit = "identity",
    ):
        super().__init__(
            dim, num_heads, layer_idx, freq_dim, backend, factor=factor, lora_rank=lora_rank,
            lora_targets=lora_targets, lora_alpha=lora_alpha, lora_bias=lora_bias, lora_init_b=lora_init_b,
            key_proj=key_proj, rope=rope, pad=pad, up_init=up_init,
        )
        self.windows = window_schedule("windows", windows, 2)
        self.window_rope = check_choice("window_rope", window_rope, WINDOW_ROPES)
        self.antialias = antialias

    @property
    def window_grid(self) -> tuple[int, int]:
        """(rows, cols) coarse window counts of this layer."""
        return self.windows[self.layer_idx % len(self.windows)]

    def fit(self, grid: VideoGrid) -> tuple[Compression, PlaneFit]:
        """Compression of `grid` and the window fit of the compressed plane."""
        plan = Compression.plan(grid, self.factor, self.pad)
        return plan, PlaneFit.plan(plan.compressed, self.window_grid, self.pad, self.antialias, "coarse window grid")

    def attend(self, attn, x: Tensor, ctx: AttentionContext) -> tuple[Tensor, Compression]:
        """Windowed attention output on the coarse plane (`fit.source`), (B, T, h', w', C), and the compression."""
        b, _, c = x.shape
        plan, fit = self.fit(ctx.grid)
        z = plan.compress(x.reshape(b, *ctx.grid, c), self.down)  # (B, T, h', w', C)
        scale, offset = self.rope_affine
        out = attend_windows(
            z, partial(self.project, attn), fit, self.window_grid, ctx.rope, self.window_rope, self.backend,
            rope_scale=scale, rope_offset=offset,
        )  # (B, N_coarse, C) on fit.source
        return self.output_delta(out).reshape(b, *fit.source, c), plan

    def cost(self, grid: VideoGrid) -> AttentionCost:
        plan, fit = self.fit(grid)
        maps = windows_maps(self.dim, window_shapes(fit.work, (1, *self.window_grid)))
        return self.plane_cost(plan, fit.work.numel, maps)

    def describe(self) -> str:
        return f"{type(self).__name__}[{'x'.join(map(str, self.window_grid))}]"

    def extra_repr(self) -> str:
        nh, nw = self.window_grid
        cycle = ", ".join(f"{h}x{w}" for h, w in self.windows)
        return f"windows={nh}x{nw} (cycle [{cycle}]), window_rope={self.window_rope}, {super().extra_repr()}"
