"""Sample metrics as pure functions on video arrays: procedural-clip object metrics and the window-seam score."""

from ultragen.eval.objects import (
    Tolerances,
    as_frames,
    centroid_track,
    color_mask,
    count_objects,
    dominant_color,
    motion_direction,
    score_sample,
    score_samples,
    trajectory_error,
)
from ultragen.eval.seams import seam_boundaries, seam_score, window_boundaries

__all__ = [
    "Tolerances",
    "as_frames",
    "centroid_track",
    "color_mask",
    "count_objects",
    "dominant_color",
    "motion_direction",
    "score_sample",
    "score_samples",
    "seam_boundaries",
    "seam_score",
    "trajectory_error",
    "window_boundaries",
]
