"""Window-seam score: gradient energy across window boundaries relative to the rest of the frame.

Window attention splits the token plane into windows (`PlaneFit` pads or resizes it to a multiple of the window
grid first); an artefact of that split shows as a step across the boundary pixels. With d the absolute difference
of adjacent pixels (all channels, all frames) across rows and columns, a boundary at pixel x is the difference
between x - 1 and x. The score pools the d of every boundary (rows and columns) against the d of every other
position:

    score = mean(d at boundaries) / (mean(d at the reference positions) + 1e-6)

The reference positions are every other position by default. A codec that decodes each token separately (the
parameter-free `PixelCodec`, or any patch-wise decoder) leaves a step at every token edge, and window edges are
token edges, so pass `token_pixels` (pixels per token, rows and columns): the reference is then the token edges
that are not window boundaries, and the score isolates what the windows add to the patch grid.

~1 for a video without window artefacts, > 1 with seams; invariant to adding a constant to the video. The 1e-6
(in pixel-value units) only keeps a flat video finite, where the score is 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ultragen.eval.objects import Video, frames_layout
from ultragen.models.attention.base import VideoGrid
from ultragen.models.attention.options import PAD_POLICIES, PadPolicy, PlaneFit, WindowOptions, check_choice

EPS = 1e-6


def window_boundaries(length: int, windows: int, pad: PadPolicy = "replicate") -> list[int]:
    """Token positions inside [1, length) where a new window starts, windows fitted as `PlaneFit.plan` does."""
    check_choice("pad", pad, PAD_POLICIES)
    if length < 1 or windows < 1:
        raise ValueError(f"length={length} and windows={windows} must be positive")
    fit = PlaneFit.plan(VideoGrid(1, length, 1), (windows, 1), pad, what="window count")
    size = fit.work.h // windows
    starts = {k * size for k in range(1, windows)}
    if fit.resamples:  # `interpolate`: edges of the resized plane's windows, mapped back and rounded to a token
        starts = {math.floor(b * length / fit.work.h + 0.5) for b in starts}
    return sorted(b for b in starts if 0 < b < length)


def seam_boundaries(
    grid_h: int,
    grid_w: int,
    window_grids: Sequence[Sequence[int]],
    pixels_per_token: tuple[int, int],
    pad: PadPolicy = "replicate",
) -> tuple[list[int], list[int]]:
    """Pixel rows and columns where a window of any (rows, cols) grid of the schedule starts, for a token plane."""
    grids = WindowOptions(counts=window_grids).check_size(2).counts
    py, px = pixels_per_token
    rows = {b * py for nh, _ in grids for b in window_boundaries(grid_h, nh, pad)}
    cols = {b * px for _, nw in grids for b in window_boundaries(grid_w, nw, pad)}
    return sorted(rows), sorted(cols)


def seam_score(
    video: Video, rows: Sequence[int], cols: Sequence[int], token_pixels: tuple[int, int] = (1, 1)
) -> float:
    """Mean |pixel step| across the boundary rows/cols over the mean at the other token edges (every other
    position with the default `token_pixels` (1, 1)), for (F, H, W, C) or (C, F, H, W) video."""
    frames = frames_layout(video)
    _, h, w, _ = frames.shape
    for name, bounds, size in (("rows", rows, h), ("cols", cols, w)):
        if any(not 0 < b < size for b in bounds):
            raise ValueError(f"{name}={list(bounds)} must lie in [1, {size - 1}] for a frame of {h}x{w}")
    py, px = token_pixels
    if py < 1 or px < 1 or any(b % py for b in rows) or any(b % px for b in cols):
        raise ValueError(f"boundaries rows={list(rows)} cols={list(cols)} must be multiples of token_pixels="
                         f"{token_pixels} (positive); give boundaries in pixels on the token grid")
    row_sum, col_sum = np.zeros(h - 1), np.zeros(w - 1)  # summed |d| per boundary position (b - 1)
    for frame in frames:
        x = frame.astype(np.float64)
        row_sum += np.abs(np.diff(x, axis=0)).sum((1, 2))
        col_sum += np.abs(np.diff(x, axis=1)).sum((0, 2))
    r, c = np.isin(np.arange(1, h), rows), np.isin(np.arange(1, w), cols)
    r_ref, c_ref = ~r & (np.arange(1, h) % py == 0), ~c & (np.arange(1, w) % px == 0)  # reference positions
    per_row, per_col = frames.shape[0] * w * frames.shape[3], frames.shape[0] * h * frames.shape[3]  # d per position
    seam_n, rest_n = r.sum() * per_row + c.sum() * per_col, r_ref.sum() * per_row + c_ref.sum() * per_col
    if seam_n == 0 or rest_n == 0:
        raise ValueError(f"rows={list(rows)} and cols={list(cols)} leave no boundary or no reference position; give both")
    seam = (row_sum[r].sum() + col_sum[c].sum()) / seam_n
    rest = (row_sum[r_ref].sum() + col_sum[c_ref].sum()) / rest_n
    return float(seam / (rest + EPS))
