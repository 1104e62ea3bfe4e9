"""Figures of sampled videos: frame strips (one row per video, frames left to right, caption underneath) and the
same prompts across checkpoints (one column per step)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ultragen.eval.objects import Video, as_frames

CAPTION_HEIGHT = 14


def frame_strip(videos: Sequence[Video], captions: Sequence[str] | None = None, frames: int = 5, scale: int = 2) -> Image.Image:
    """One row per video of `frames` evenly spaced frames, each magnified `scale`x (nearest), captions below."""
    if not len(videos):
        raise ValueError("frame_strip needs at least one video")
    if captions is not None and len(captions) != len(videos):
        raise ValueError(f"{len(captions)} captions for {len(videos)} videos; pass one caption per video")
    rows = []
    for i, video in enumerate(videos):
        clip = as_frames(video)  # (F, H, W, 3)
        picks = np.linspace(0, len(clip) - 1, min(frames, len(clip))).round().astype(int)
        row = np.concatenate([np.pad(clip[f], ((0, 0), (0, 2), (0, 0)), constant_values=255) for f in picks], axis=1)
        row = row.repeat(scale, axis=0).repeat(scale, axis=1)
        if captions is not None:
            band = Image.new("RGB", (row.shape[1], CAPTION_HEIGHT), "white")
            ImageDraw.Draw(band).text((2, 1), captions[i], fill="black", font=ImageFont.load_default())
            row = np.concatenate([row, np.asarray(band)], axis=0)
        rows.append(np.pad(row, ((0, 2), (0, 0), (0, 0)), constant_values=255))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    return Image.fromarray(np.concatenate(rows, axis=0))


def middle_frames(videos: Sequence[Video]) -> list[np.ndarray]:
    """The middle frame (H, W, 3) uint8 of each video."""
    return [clip[len(clip) // 2] for clip in map(as_frames, videos)]


def progress_grid(history: Sequence[tuple[int, Sequence[np.ndarray]]], scale: int = 2) -> Image.Image:
    """Samples of the same prompts and seeds across checkpoints: one column per (step, frames) entry of `history`
    (one (H, W, 3) frame per prompt, e.g. `middle_frames`), rows in prompt order, the step above each column."""
    if not history or len({len(frames) for _, frames in history}) != 1:
        raise ValueError("progress_grid needs (step, frames) entries with one frame per prompt, as many each step")
    columns = []
    for step, frames in history:
        column = np.concatenate([np.pad(f, ((0, 2), (0, 2), (0, 0)), constant_values=255) for f in frames], axis=0)
        column = column.repeat(scale, axis=0).repeat(scale, axis=1)
        band = Image.new("RGB", (column.shape[1], CAPTION_HEIGHT), "white")
        ImageDraw.Draw(band).text((2, 1), f"step {step}", fill="black", font=ImageFont.load_default())
        columns.append(np.concatenate([np.asarray(band), column], axis=0))
    return Image.fromarray(np.concatenate(columns, axis=1))


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Write a PNG atomically (temporary name, then rename); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    image.save(tmp, format="PNG")
    tmp.replace(path)
    return path
