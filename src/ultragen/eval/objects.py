"""Sample metrics on procedural clips: colour, object count, motion direction and trajectory against the truth.

Every metric starts from a colour mask: the pixels within Euclidean RGB distance `color` (default 50) of a
`PALETTE` colour. Palette colours are >= 175 apart from each other and >= 115 from every background gradient,
and a one-pixel anti-aliased blend of an object with a background stays >= 100 from every other palette colour,
so with 50 (under half of 115) no background pixel and no pixel of another colour is ever in the mask. An
anti-aliased edge pixel enters when it is mostly object (coverage >= 1 - 50 / contrast, 0.57 to 0.85 for the
palette), so the mask of a rendered clip is its objects to within half a pixel at each edge. The margin absorbs
h264 noise and the yuv420 chroma blur that smears colour over about one pixel at edges.

- `color_correct`: the dominant colour (most in-tolerance pixels over the clip, at least `min_area` of it) is the
  prompted colour.
- `count_error`: |median over frames of the connected components (8-connected) of the prompted colour's mask that
  cover at least `min_area` of the frame (default 0.002, a quarter of the smallest procedural object: four objects
  on a 16:9 frame cover 0.009 each) - truth count|. The mask is first opened with a 3x3 square: yuv420 shares
  chroma between pixel pairs, which can detach a one-pixel sliver from an object's edge.
- `direction_correct`: the displacement of the prompted colour's mask centroid from the first to the last frame
  where it is present, along its larger axis, names the truth direction; below `min_shift` (default 0.05 of the
  frame, a third of the smallest procedural travel 0.14) it is "static", with under two such frames "none".
- `trajectory_error`: mean over frames of the distance, in fractions of the frame ((y, x) as fractions of H and
  W), between the mask centroid and the mean of the truth centroids; a frame without the colour counts 1.0, the
  error of a centroid one frame side away.

Videos are (F, H, W, 3) uint8 numpy arrays or torch tensors, or the model's (3, F, H, W) layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from ultragen.data.procedural import DIRECTIONS, PALETTE, Truth

Video = np.ndarray | torch.Tensor


@dataclass(frozen=True)
class Tolerances:
    """Colour distance (RGB units), minimum object area and minimum motion (fractions of the frame)."""

    color: float = 50.0
    min_area: float = 0.002
    min_shift: float = 0.05


DEFAULTS = Tolerances()


#################################################################################
#                                  Colour masks                                 #
#################################################################################


def frames_layout(video: Video) -> np.ndarray:
    """(F, H, W, C) numpy view of an (F, H, W, 3) or (3, F, H, W) array or tensor, dtype unchanged."""
    array = video.detach().cpu().numpy() if isinstance(video, torch.Tensor) else np.asarray(video)
    if array.ndim == 4 and array.shape[-1] == 3:
        return array
    if array.ndim == 4 and array.shape[0] == 3:
        return array.transpose(1, 2, 3, 0)
    raise ValueError(f"video of shape {tuple(array.shape)} is not (F, H, W, 3) or (3, F, H, W)")


def to_uint8(video: torch.Tensor) -> torch.Tensor:
    """A video in [-1, 1] (any float dtype and layout) as uint8 in [0, 255], the layout the metrics read."""
    return ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def as_frames(video: Video) -> np.ndarray:
    """(F, H, W, 3) uint8 numpy frames of an (F, H, W, 3) or (3, F, H, W) uint8 array or tensor."""
    frames = frames_layout(video)
    if frames.dtype != np.uint8:
        raise ValueError(f"video dtype {frames.dtype} is not uint8; map [-1, 1] to ((x + 1) * 127.5).round() first")
    return frames


def color_mask(video: Video, color: str, tol: float = DEFAULTS.color) -> np.ndarray:
    """(F, H, W) bool: pixels within RGB distance `tol` of PALETTE[color]."""
    if color not in PALETTE:
        raise ValueError(f"color={color!r} is not in the palette; choose one of {list(PALETTE)}")
    diff = as_frames(video).astype(np.int32) - np.array(PALETTE[color], np.int32)
    return (diff * diff).sum(-1) <= tol * tol


def dominant_color(video: Video, tol: float = DEFAULTS.color, min_area: float = DEFAULTS.min_area) -> str | None:
    """Palette colour with the most in-tolerance pixels over the clip; None if none covers `min_area` of it."""
    frames = as_frames(video)
    areas = {color: int(color_mask(frames, color, tol).sum()) for color in PALETTE}
    best = max(areas, key=areas.get)
    return best if areas[best] >= min_area * frames[..., 0].size else None


#################################################################################
#                               Count and motion                                #
#################################################################################


def count_objects(video: Video, color: str, tol: float = DEFAULTS.color, min_area: float = DEFAULTS.min_area) -> int:
    """Median (the lower one) over frames of the 8-connected components of the opened mask covering `min_area`."""
    mask = color_mask(video, color, tol)  # (F, H, W)
    smallest, square = min_area * mask[0].size, np.ones((3, 3), bool)
    counts = []
    for frame in mask:
        labels, _ = ndimage.label(ndimage.binary_opening(frame, square), structure=square)
        counts.append(int((np.bincount(labels.ravel())[1:] >= smallest).sum()))
    return sorted(counts)[(len(counts) - 1) // 2]


def centroid_track(video: Video, color: str, tol: float = DEFAULTS.color) -> np.ndarray:
    """(F, 2) mask centroid per frame as (y, x) fractions of the frame (pixel i at (i + 0.5) / H); NaN if empty."""
    mask = color_mask(video, color, tol)  # (F, H, W)
    _, h, w = mask.shape
    area = mask.sum((1, 2)).astype(np.float64)
    y = mask.sum(2) @ ((np.arange(h) + 0.5) / h)  # (F,)
    x = mask.sum(1) @ ((np.arange(w) + 0.5) / w)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.stack([y, x], axis=1) / area[:, None]


def motion_direction(track: np.ndarray, min_shift: float = DEFAULTS.min_shift) -> str:
    """Direction word of the first-to-last displacement of a (F, 2) track, "static" or "none" (< 2 frames)."""
    valid = track[~np.isnan(track).any(axis=1)]
    if len(valid) < 2:
        return "none"
    shift = valid[-1] - valid[0]  # (dy, dx)
    axis = int(np.argmax(np.abs(shift)))
    if abs(shift[axis]) < min_shift:
        return "static"
    step = (int(np.sign(shift[0])), 0) if axis == 0 else (0, int(np.sign(shift[1])))
    return {d: word for word, d in DIRECTIONS.items()}[step]


def trajectory_error(track: np.ndarray, truth: Truth) -> float:
    """Mean over frames of |track - mean truth centroid| in frame fractions; frames without a centroid count 1.0."""
    target = np.asarray(truth.centroids, np.float64).mean(axis=1)  # (F, 2)
    if track.shape != target.shape:
        raise ValueError(f"track of shape {track.shape} does not match the truth's {target.shape}; score every frame")
    dist = np.linalg.norm(track - target, axis=1)
    return float(np.where(np.isnan(dist), 1.0, dist).mean())


#################################################################################
#                                    Scores                                     #
#################################################################################


def score_sample(video: Video, truth: Truth, tol: Tolerances = DEFAULTS) -> dict[str, float]:
    """color_correct, count_error, direction_correct, trajectory_error of one clip; masks use the prompted colour."""
    frames = as_frames(video)
    count = count_objects(frames, truth.color, tol.color, tol.min_area)
    track = centroid_track(frames, truth.color, tol.color)
    return {
        "color_correct": float(dominant_color(frames, tol.color, tol.min_area) == truth.color),
        "count_error": float(abs(count - truth.count)),
        "direction_correct": float(motion_direction(track, tol.min_shift) == truth.direction),
        "trajectory_error": trajectory_error(track, truth),
    }


def score_samples(videos: Sequence[Video], truths: Sequence[Truth], tol: Tolerances = DEFAULTS) -> dict[str, float]:
    """Means of `score_sample` over clips, plus `n` (the number of clips, an int)."""
    if len(videos) != len(truths) or len(videos) == 0:
        raise ValueError(f"got {len(videos)} videos and {len(truths)} truths; pass one truth per video, at least one")
    scores = [score_sample(v, t, tol) for v, t in zip(videos, truths)]
    return {key: float(np.mean([s[key] for s in scores])) for key in scores[0]} | {"n": len(scores)}
