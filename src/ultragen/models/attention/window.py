"""Window attention: UltraGen's local cross-window scheme, Swin shifted windows, and the shared window machinery.

Windows are expressed as one token order ("window-major") plus its inverse, so a branch gathers its input
tokens once, projects them in window order, runs one attention call per group of equal-size windows, and
scatters the result back; replicate padding is part of that gather.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ultragen.models.attention.base import (
    AttentionBackend,
    AttentionContext,
    AttentionCost,
    AttentionStrategy,
    VideoGrid,
    windows_maps,
)
from ultragen.models.attention.options import (
    Padding,
    PlaneFit,
    WindowOptions,
    WindowRope,
    counts_text,
    resize_plane,
)
from ultragen.models.rope import Rotary, RotaryTables, apply_rope

Projection = Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]


#################################################################################
#                                 Window layouts                                #
#################################################################################


def window_spans(size: int, count: int, shifted: bool = False) -> list[tuple[int, int]]:
    """(start, length) of the windows along one axis; shifted windows start half a window in (Swin)."""
    step = size // count
    if not shifted or step < 2:
        return [(i * step, step) for i in range(count)]
    s = step // 2
    return [(0, s), *((s + i * step, step) for i in range(count - 1)), (size - (step - s), step - s)]


def window_shapes(work: VideoGrid, counts: Sequence[int], shifted: bool = False) -> dict[tuple[int, int, int], int]:
    """Window shape (t, h, w) -> number of such windows, for `counts` windows per axis on `work`."""
    shapes: dict[tuple[int, int, int], int] = {}
    spans = [window_spans(n, c, shifted and axis > 0) for axis, (n, c) in enumerate(zip(work, counts))]
    for window in itertools.product(*spans):
        shape = tuple(length for _, length in window)
        shapes[shape] = shapes.get(shape, 0) + 1
    return shapes


class WindowLayout:
    """Windows of `fit.work` as one window-major token order over `fit.source`, grouped by window size.

    `order[j]`: source token of the j-th windowed token (replicate padding repeats edge tokens);
    `inverse[i]`: position in `order` of source token i; `groups`: (windows, tokens per window) in order;
    `local[j]`: flat index of token j inside a window-shaped table of size `local_grid` (window-local RoPE).
    """

    def __init__(self, fit: PlaneFit, counts: Sequence[int], strided: bool, shifted: bool, device: str):
        work, src = fit.work, fit.source
        nt, nh, nw = counts
        if work.t % nt or work.h % nh or work.w % nw:
            raise ValueError(
                f"token grid {work} is not divisible by the window counts {nt}x{nh}x{nw}; "
                "choose counts that divide the grid"
            )
        idx = torch.arange(work.numel).view(work.t, work.h, work.w)
        if strided:  # "remote" windows: token i of every axis goes to window i mod n
            wt, wh, ww = work.t // nt, work.h // nh, work.w // nw
            blocks = [idx.view(wt, nt, wh, nh, ww, nw).permute(1, 3, 5, 0, 2, 4).reshape(-1, wt, wh, ww)]
        else:
            spans = [window_spans(n, c, shifted and axis > 0) for axis, (n, c) in enumerate(zip(work, counts))]
            by_shape: dict[tuple[int, int, int], list[Tensor]] = {}
            for (t0, lt), (h0, lh), (w0, lw) in itertools.product(*spans):
                by_shape.setdefault((lt, lh, lw), []).append(idx[t0 : t0 + lt, h0 : h0 + lh, w0 : w0 + lw])
            blocks = [torch.stack(ws) for ws in by_shape.values()]
        self.groups = tuple((b.shape[0], b[0].numel()) for b in blocks)
        self.local_grid = lg = VideoGrid(*(max(b.shape[axis] for b in blocks) for axis in (1, 2, 3)))
        local = []  # flat index of each windowed token in a (lg.t, lg.h, lg.w) table, per window
        for b in blocks:
            t, h, w = (torch.arange(n) for n in b.shape[1:])
            local.append(((t[:, None, None] * lg.h + h[None, :, None]) * lg.w + w).reshape(-1).repeat(b.shape[0]))
        order = torch.cat([b.reshape(-1) for b in blocks])  # working-grid index of each windowed token
        position = torch.empty_like(order)
        position[order] = torch.arange(order.numel())
        if work != src:  # replicate padding: padded tokens read the nearest edge token of the source plane
            t, r, c = (i.reshape(-1) for i in torch.meshgrid(*(torch.arange(n) for n in work), indexing="ij"))
            order = ((t * src.h + r.clamp(max=src.h - 1)) * src.w + c.clamp(max=src.w - 1))[order]
            position = position.view(work.t, work.h, work.w)[:, : src.h, : src.w].reshape(-1)
        self.fit = fit
        self.identity = bool(work == src and torch.equal(order, torch.arange(order.numel())))
        self.order = order.to(device)
        self.inverse = position.to(device)
        self.local = torch.cat(local).to(device)
        self.device = device
        self._rope: dict[tuple, Rotary] = {}

    def rope(self, tables: RotaryTables, mode: WindowRope, scale: float = 1.0, offset: float = 0.0) -> Rotary:
        """RoPE rows (N_work, head_dim / 2) in window order: global positions or window-local ones.

        Spatial positions are `scale · p + offset` with p the plane coordinate (compressed grids use this).
        """
        key = (tables.head_dim, tables.theta, mode, scale, offset)
        if key not in self._rope:
            if mode == "global":
                (rows, cols), frames, index = self.fit.positions(), self.fit.source.t, self.order
            else:
                lg = self.local_grid
                rows, cols = (torch.arange(n, dtype=torch.float64) for n in (lg.h, lg.w))
                frames, index = lg.t, self.local
            table = tables.rotary(torch.arange(frames), rows * scale + offset, cols * scale + offset)
            index = index.cpu()
            self._rope[key] = Rotary(table.cos[index].to(self.device), table.sin[index].to(self.device))
        return self._rope[key]


@functools.lru_cache(maxsize=16)
def window_layout(
    fit: PlaneFit, counts: tuple[int, int, int], strided: bool = False, shifted: bool = False, device: str = "cpu"
) -> WindowLayout:
    """Cached `WindowLayout` (index tensors and RoPE rows on `device`; 16 most recent grids/layers)."""
    return WindowLayout(fit, counts, strided, shifted, device)


@functools.lru_cache(maxsize=16)
def plane_rotary(
    head_dim: int, theta: float, grid: VideoGrid, scale: float = 1.0, offset: float = 0.0, device: str = "cpu"
) -> Rotary:
    """Cached RoPE tables (N, head_dim / 2) of `grid` with spatial positions `scale · i + offset`."""
    rows, cols = (torch.arange(n, dtype=torch.float64) * scale + offset for n in (grid.h, grid.w))
    r = RotaryTables(head_dim, theta).rotary(torch.arange(grid.t), rows, cols)
    return Rotary(r.cos.to(device), r.sin.to(device))


#################################################################################
#                               Windowed attention                              #
#################################################################################


def grouped_attention(
    q: Tensor, k: Tensor, v: Tensor, groups: Sequence[tuple[int, int]], backend: AttentionBackend
) -> Tensor:
    """q, k, v (B, N, H, D) in window order, one attention call per group of equal windows -> (B, N, H·D)."""
    b, outs, start = q.shape[0], [], 0
    for num, length in groups:
        end = start + num * length
        qs, ks, vs = (x[:, start:end].reshape(b * num, length, *x.shape[2:]) for x in (q, k, v))
        outs.append(backend(qs, ks, vs).reshape(b, num * length, -1))
        start = end
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)


def attend_windows(
    x: Tensor,
    project: Projection,
    fit: PlaneFit,
    counts: Sequence[int],
    tables: RotaryTables,
    rope: WindowRope,
    backend: AttentionBackend,
    shifted: bool = False,
    rope_scale: float = 1.0,
    rope_offset: float = 0.0,
) -> Tensor:
    """Spatial windows (full temporal tubes) over x (B, T, h, w, C) on `fit.grid` -> (B, N_source, C).

    The output lies on `fit.source`: the original plane, or the resized one under `interpolate`.
    """
    b, c = x.shape[0], x.shape[-1]
    if fit.resamples:
        x = resize_plane(x, (fit.work.h, fit.work.w), fit.antialias)
    layout = window_layout(fit, (1, *counts), False, shifted, str(x.device))
    tokens = x.reshape(b, -1, c)  # (B, N_source, C)
    if not layout.identity:
        tokens = tokens.index_select(1, layout.order)  # (B, N_work, C), window-major
    q, k, v = project(tokens)
    table = layout.rope(tables, rope, rope_scale, rope_offset)
    out = grouped_attention(apply_rope(q, table), apply_rope(k, table), v, layout.groups, backend)
    return out if layout.identity else out.index_select(1, layout.inverse)


#################################################################################
#                            Local window strategies                            #
#################################################################################


class LocalWindowAttention(AttentionStrategy):
    """Non-overlapping spatial windows, each a full-length temporal tube, with the pretrained q/k/v.

    `windows.counts` is a per-layer list of window grids (rows, cols) cycled by the absolute layer index; the
    release alternates `[[4, 4], [5, 5]]` (UltraGen's cross-window scheme, the default). Layers whose
    `windows.shifts` entry is true move the windows by half a window (Swin).
    """

    default_windows = WindowOptions(counts=((4, 4), (5, 5)))

    def __init__(
        self,
        dim: int,
        num_heads: int,
        layer_idx: int,
        freq_dim: int = 256,
        backend: AttentionBackend | str = "sdpa",
        *,
        windows: WindowOptions | None = None,
        padding: Padding | None = None,
    ):
        super().__init__(dim, num_heads, layer_idx, freq_dim, backend)
        self.windows = (windows or self.default_windows).check_size(2)
        self.padding = padding or Padding()

    @property
    def window_grid(self) -> tuple[int, int]:
        """(rows, cols) window counts of this layer."""
        return self.windows.at(self.layer_idx)

    @property
    def shifted(self) -> bool:
        """Whether this layer's windows are shifted by half a window (Swin)."""
        return self.windows.shifted(self.layer_idx)

    def fit(self, grid: VideoGrid) -> PlaneFit:
        """Working grid of this layer's windows on `grid` (raises under padding error if not divisible)."""
        return PlaneFit.plan(grid, self.window_grid, self.padding.policy, self.padding.antialias)

    def forward(self, attn, x: Tensor, ctx: AttentionContext) -> Tensor:
        b, n, c = x.shape
        grid = ctx.grid
        fit = self.fit(grid)
        out = attend_windows(
            x.reshape(b, *grid, c), attn.qkv, fit, self.window_grid, ctx.rope, self.windows.rope, self.backend,
            self.shifted,
        )  # (B, N_source, C)
        if fit.resamples:
            out = resize_plane(out.reshape(b, *fit.work, c), (grid.h, grid.w), self.padding.antialias).reshape(b, n, c)
        return out

    def cost(self, grid: VideoGrid) -> AttentionCost:
        fit = self.fit(grid)
        shapes = window_shapes(fit.work, (1, *self.window_grid), self.shifted)
        return AttentionCost(windows_maps(self.dim, shapes), 6.0 * fit.work.numel * self.dim**2)

    def describe(self) -> str:
        return f"{type(self).__name__}[{counts_text(self.window_grid)}]"

    def extra_repr(self) -> str:
        return (
            f"windows={self.windows.describe(self.layer_idx)}, shifted={self.shifted}, rope={self.windows.rope}, "
            f"padding={self.padding.policy}, antialias={self.padding.antialias}, {super().extra_repr()}"
        )


class SwinAttention(LocalWindowAttention):
    """Swin-style local attention: by default 4x4 windows, every second layer shifted by half a window.

    Shifted windows are exact (no cyclic roll, no mask): the windows cut off at the borders
    are attended separately, as Swin's masked cyclic shift does.
    """

    default_windows = WindowOptions(counts=((4, 4),), shifts=(False, True))
