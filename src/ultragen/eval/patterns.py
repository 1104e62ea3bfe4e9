"""Attention patterns: which tokens one query token reads, probed from a strategy's own forward pass.

The map is the support of one row of the layer's Jacobian: the gradient of the query token's output with respect
to an input token is exactly zero where the strategy gives the query no path to that token, and (with random input
and weights) nonzero where it does. Nothing here re-implements window math, so the picture follows the code:
padding, shifted and strided windows, compression with bilinear upsampling, and the Conv3d with the strategy's
current weights (the default identity init adds no neighbours; the release's box init adds a 3×3×3 neighbourhood).
"""

from __future__ import annotations

import copy
import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from torch import Tensor

from ultragen.bench import attention_inputs
from ultragen.models.attention.base import AttentionStrategy, VideoGrid
from ultragen.lit.config import layer_strategies, read_config
from ultragen.models.blocks import SelfAttention

Query = tuple[int, int, int]

FRAME_GAP = 1  # blank token columns between frames in a plotted strip
TITLE_WIDTH = 44  # characters per line of a panel title
PANEL_INCHES, TITLE_INCHES = 3.2, 0.9  # width of a panel, height of its two-line title
HIDDEN, VISIBLE, QUERY = "#23264a", "#f2c14e", "#d62728"


#################################################################################
#                                    Probing                                    #
#################################################################################


def check_query(grid: VideoGrid, query: Sequence[int]) -> Query:
    """Return query as a (t, h, w) tuple if it lies on grid, else raise naming both."""
    q = tuple(int(i) for i in query)
    if len(q) != 3 or not all(0 <= i < n for i, n in zip(q, grid)):
        raise ValueError(f"query {tuple(query)} is not a (t, h, w) token of the grid {grid}")
    return q


def visibility(
    strategy: AttentionStrategy, grid: VideoGrid, query: Sequence[int], freq_dim: int = 256, seed: int = 0
) -> Tensor:
    """Tokens that `query` (t, h, w) reads in one forward pass of `strategy` on `grid`: bool (T, H, W).

    Runs a copy of the strategy inside a `SelfAttention` with seeded random weights and input, and a timestep
    feature of `freq_dim` channels (the network's; Wan's is 256) for strategies with gates.
    """
    t, h, w = check_query(grid, query)
    if any(p.is_meta for p in strategy.parameters()):
        raise ValueError(f"{type(strategy).__name__} has meta-device weights; build it on the CPU (device='cpu')")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        layer = SelfAttention(strategy.dim, strategy.num_heads, copy.deepcopy(strategy))
        x, ctx = attention_inputs(grid, strategy.dim, strategy.num_heads, freq_dim=freq_dim)  # x (1, N, C)
        probe = torch.randn(strategy.dim)
    out = layer(x, ctx)[0, (t * grid.h + h) * grid.w + w]  # (C,)
    (grad,) = torch.autograd.grad(out @ probe, x)
    return grad[0].ne(0).any(-1).view(grid.t, grid.h, grid.w)


def visibility_maps(
    strategies: Mapping[str, AttentionStrategy], grid: VideoGrid, query: Sequence[int], freq_dim: int = 256
) -> dict[str, Tensor]:
    """`visibility` of each named strategy; a composite (one with `branches()`) adds one map per branch."""
    maps = {}
    for name, strategy in strategies.items():
        maps[name] = visibility(strategy, grid, query, freq_dim)
        branches = strategy.branches() if hasattr(strategy, "branches") else ()
        for branch_name, branch in branches:
            if branch is not None:
                maps[f"{name} · {branch_name}"] = visibility(branch, grid, query, freq_dim)
    return maps


def config_layers(
    paths: Sequence[str | Path], layers: Sequence[int], dim: int = 32, num_heads: int = 2
) -> dict[str, AttentionStrategy]:
    """Strategies of `layers` of stacked YAML configs (preset first), built at width `dim` (patterns do not
    depend on it), keyed 'layer i: <describe>'."""
    strategies = layer_strategies(read_config(paths), dim=dim, num_heads=num_heads, device="cpu")
    return {f"layer {i}: {strategies[i].describe()}": strategies[i] for i in layers}


#################################################################################
#                                    Plotting                                   #
#################################################################################


def plot_visibility(
    maps: Mapping[str, Tensor], query: Sequence[int], frames: Sequence[int] | None = None, ncols: int = 3
) -> Figure:
    """One panel per map: the chosen frames (default all) side by side, visible tokens light, the query ✕."""
    if not maps:
        raise ValueError("plot_visibility needs at least one map")
    t, h, w = next(iter(maps.values())).shape
    if any(m.shape != (t, h, w) for m in maps.values()):
        shapes = sorted({tuple(m.shape) for m in maps.values()})
        raise ValueError(f"maps have different grids {shapes}; plot them in separate figures")
    query = check_query(VideoGrid(t, h, w), query)
    frames = list(range(t)) if frames is None else [int(f) for f in frames]
    if not frames or not all(0 <= f < t for f in frames):
        raise ValueError(f"frames {frames} must be a non-empty list of frames in [0, {t})")
    stride = w + FRAME_GAP
    width = len(frames) * stride - FRAME_GAP
    nrows, ncols = math.ceil(len(maps) / ncols), min(ncols, len(maps))
    fig = Figure(
        figsize=(ncols * PANEL_INCHES, nrows * (PANEL_INCHES * h / width + TITLE_INCHES)), layout="constrained"
    )
    axes = fig.subplots(nrows, ncols, squeeze=False)
    cmap = ListedColormap([HIDDEN, VISIBLE]).with_extremes(bad="white")  # NaN: the gap between frames
    for ax, (name, mask) in zip(axes.flat, maps.items()):
        strip = np.full((h, width), np.nan)
        for j, f in enumerate(frames):
            strip[:, j * stride : j * stride + w] = mask[f].numpy()
        ax.imshow(strip, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        if query[0] in frames:
            ax.plot(frames.index(query[0]) * stride + query[2], query[1], marker="x", color=QUERY, markersize=6)
        share = f"sees {100 * mask.float().mean():.1f}% of {mask.numel():,} tokens"
        ax.set_title(f"{textwrap.fill(name, TITLE_WIDTH)}\n{share}", fontsize=8)
        ax.set_xticks([j * stride + (w - 1) / 2 for j in range(len(frames))], [f"t={f}" for f in frames], fontsize=7)
        ax.set_yticks([])
    for ax in axes.flat[len(maps) :]:
        ax.axis("off")
    return fig
