"""Procedural moving-object videos with ground truth: one generator for the demo set, the synthetic DataModule,
the ablation study and the tests.

A scene is resolution-independent: a background and `count` objects of one colour and shape that move in one
direction, each in its own lane. `render` draws it at any size; `Scene.truth` returns what was drawn (count,
colour, shape, direction and per-frame centroids and boxes, in fractions of the frame), so sample metrics
(`ultragen.eval.objects`) can be checked exactly on the rendered frames.

Colours are flat (no shading) and far apart in RGB from each other and from every background, so a colour
mask with a tolerance separates them; edges are anti-aliased over one pixel.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

# Object colours (RGB, uint8). Pairwise distances >= 120 and >= 110 from every background colour.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (40, 90, 235),
    "yellow": (235, 215, 40),
    "white": (240, 240, 240),
    "magenta": (215, 50, 215),
}
# Backgrounds: vertical gradients (top colour, bottom colour).
BACKGROUNDS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "black": ((10, 10, 10), (45, 45, 45)),
    "grey": ((95, 95, 95), (130, 130, 130)),
    "brown": ((70, 45, 25), (105, 70, 40)),
}
SHAPES = ("circle", "square")
# Direction word -> unit motion (dy, dx) in image coordinates (y grows downwards). One distinct word each, so a
# text encoder need not rely on word order ("left to right" and "right to left" share their tokens).
DIRECTIONS: dict[str, tuple[int, int]] = {"rightwards": (0, 1), "leftwards": (0, -1), "downwards": (1, 0), "upwards": (-1, 0)}
COUNT_WORDS = ("zero", "one", "two", "three", "four")
Mode = Literal["objects", "global"]
MODES = ("objects", "global")


#################################################################################
#                                 Scenes and truth                              #
#################################################################################


@dataclass(frozen=True)
class Truth:
    """What a clip shows: centroids (F, count, 2) and boxes (F, count, 4) as (y, x) / (y0, x0, y1, x1) fractions."""

    count: int
    color: str
    shape: str
    direction: str
    background: str
    centroids: list[list[list[float]]]
    boxes: list[list[list[float]]]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | dict) -> "Truth":
        data = json.loads(text) if isinstance(text, str) else text
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Scene:
    """`count` objects of one colour and shape moving in one direction over a background gradient.

    `radius` is a fraction of the frame's short side; `lanes` are the objects' fixed coordinates across the
    motion (fractions of that axis); `start`/`end` the coordinate along the motion at the first/last frame.
    """

    color: str
    shape: str
    direction: str
    background: str
    radius: float
    lanes: tuple[float, ...]
    start: float
    end: float
    size_word: str = "large"

    @property
    def count(self) -> int:
        return len(self.lanes)

    def caption(self) -> str:
        """States count, size, colour, shape, direction and background."""
        plural = "s" if self.count > 1 else ""
        return (
            f"{COUNT_WORDS[self.count]} {self.size_word} {self.color} {self.shape}{plural} moving {self.direction} "
            f"on a {self.background} background"
        )

    def centres(self, frames: int) -> np.ndarray:
        """Object centres (F, count, 2) as (y, x) fractions of the frame."""
        a = np.linspace(0.0, 1.0, frames) if frames > 1 else np.zeros(1)
        along = self.start + (self.end - self.start) * a  # (F,)
        dy, dx = DIRECTIONS[self.direction]
        lanes = np.asarray(self.lanes)
        out = np.empty((frames, self.count, 2))
        out[..., 0] = along[:, None] if dy else lanes[None, :]
        out[..., 1] = along[:, None] if dx else lanes[None, :]
        return out

    def truth(self, frames: int, height: int, width: int) -> Truth:
        """Ground truth of the clip rendered at this size (boxes depend on the aspect ratio)."""
        centres = self.centres(frames)
        r = self.radius * min(height, width)
        half = np.array([r / height, r / width])
        boxes = np.concatenate([centres - half, centres + half], axis=-1)
        return Truth(self.count, self.color, self.shape, self.direction, self.background,
                     centres.round(6).tolist(), boxes.round(6).tolist())


def random_scene(index: int, seed: int = 0, counts: tuple[int, ...] = (1,), mode: Mode = "objects") -> Scene:
    """Scene `index` of the set `seed` (deterministic). `global`: one huge object spanning most of the frame.

    In `objects` mode each object crosses most of the frame along the motion and has its own lane across it.
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not supported; choose one of {list(MODES)}")
    if not counts or min(counts) < 1 or max(counts) >= len(COUNT_WORDS):
        raise ValueError(f"counts={list(counts)} must be between 1 and {len(COUNT_WORDS) - 1}")
    rng = np.random.default_rng([seed, index])
    color = str(rng.choice(list(PALETTE)))
    shape = str(rng.choice(SHAPES))
    direction = str(rng.choice(list(DIRECTIONS)))
    background = str(rng.choice(list(BACKGROUNDS)))
    forward = DIRECTIONS[direction][0] + DIRECTIONS[direction][1] > 0
    if mode == "global":  # diameter 62-74% of the short side, placed anywhere within +-5% of the centre
        radius, travel, word, jitter = float(rng.uniform(0.31, 0.37)), 0.14, "huge", 0.05
        lanes = (0.5 + float(rng.uniform(-jitter, jitter)),)
    else:
        count = int(rng.choice(counts))
        radius = float(rng.uniform(0.18, 0.24)) * min(1.0, 1.6 / count)
        lanes = tuple((np.arange(count) + 0.5) / count + rng.uniform(-0.02, 0.02))
        travel, word, jitter = 0.46, "large", 0.02
    centre = 0.5 + rng.uniform(-jitter, jitter)
    start, end = centre - travel / 2, centre + travel / 2
    if not forward:
        start, end = end, start
    return Scene(color, shape, direction, background, radius, tuple(float(v) for v in lanes), start, end, word)


#################################################################################
#                                   Rendering                                   #
#################################################################################


def render(scene: Scene, frames: int, height: int, width: int) -> np.ndarray:
    """Frames (F, H, W, 3) uint8: flat-coloured objects with a one-pixel anti-aliased edge over the gradient.

    Objects must stay inside the frame (the truth would otherwise not match what is visible): raises if not.
    """
    centres = scene.centres(frames) * np.array([height, width])  # (F, count, 2) pixels
    r = scene.radius * min(height, width)
    low, high = (centres - r).min(axis=(0, 1)), (centres + r).max(axis=(0, 1))
    if low.min() < -0.5 or high[0] > height + 0.5 or high[1] > width + 0.5:
        raise ValueError(f"scene {scene} leaves the {height}x{width} frame; use a smaller radius or travel")
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5  # pixel centres
    top, bottom = (np.array(c, np.float32) for c in BACKGROUNDS[scene.background])
    ramp = (yy / height)[..., None]
    background = top * (1 - ramp) + bottom * ramp  # (H, W, 3)
    color = np.array(PALETTE[scene.color], np.float32)
    video = np.empty((frames, height, width, 3), np.uint8)
    for f in range(frames):
        alpha = np.zeros((height, width), np.float32)
        for cy, cx in centres[f]:
            dy, dx = yy - cy, xx - cx
            if scene.shape == "square":
                dist = np.maximum(np.abs(dy), np.abs(dx)) - r
            else:
                dist = np.sqrt(dy * dy + dx * dx) - r
            alpha = np.maximum(alpha, np.clip(0.5 - dist, 0.0, 1.0))
        image = background * (1 - alpha[..., None]) + color * alpha[..., None]
        video[f] = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return video


def to_tensor(video: np.ndarray) -> Tensor:
    """(F, H, W, 3) uint8 -> (3, F, H, W) float in [-1, 1]."""
    return torch.from_numpy(video).permute(3, 0, 1, 2).float() / 127.5 - 1


def procedural_prompts(count: int, seed: int, counts: tuple[int, ...] = (1,), mode: Mode = "objects") -> list[Scene]:
    """`count` scenes of the set `seed`: held-out prompts with ground truth for sample metrics."""
    return [random_scene(i, seed, counts, mode) for i in range(count)]
