"""WebDataset shards: sample format, safe reading (known extensions only), atomic shard writing, and `data build`.

A sample is `KEY.mp4` (h264) + `KEY.json` (caption, fps, width, height, frames, source, clip_start), optionally
`KEY.latents.safetensors` and `KEY.text.safetensors` (precomputed) or a `KEY.txt` caption. Nothing is unpickled.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import av
import webdataset as wds
from tqdm import tqdm

from ultragen.data.buckets import Bucket, nearest_bucket
from ultragen.data.video import H264Writer, center_offset, cover_size, open_video, stream_fps, to_rgb

logger = logging.getLogger(__name__)

KNOWN_EXTENSIONS = frozenset({"mp4", "json", "txt", "latents.safetensors", "text.safetensors"})
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm")
SHARD_MTIME = 0.0  # fixed tar member time: identical inputs give identical shard bytes


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def expand_shards(spec: str | Sequence[str]) -> list[str]:
    """Shard paths from a directory (its *.tar), a glob, a brace pattern ('a-{000..009}.tar') or a list of these."""
    urls: list[str] = []
    for item in [spec] if isinstance(spec, (str, os.PathLike)) else spec:
        item = str(item)
        if os.path.isdir(item):
            found = sorted(glob.glob(os.path.join(item, "*.tar")))
        elif "{" in item:
            found = wds.shardlists.expand_urls(item)
        elif any(c in item for c in "*?["):
            found = sorted(glob.glob(item))
        else:
            found = [item] if os.path.exists(item) or "://" in item else []
        if not found:
            raise FileNotFoundError(
                f"no shards found for {item!r}; build them with `ultragen data build` or `ultragen data demo`"
            )
        urls.extend(found)
    return urls


def check_members(sample: dict) -> None:
    """Raise unless every member of the sample has a known extension (pickle and other formats are never read)."""
    unknown = sorted(k for k in sample if not k.startswith("__") and k not in KNOWN_EXTENSIONS)
    if unknown:
        raise ValueError(
            f"sample {sample.get('__key__')!r} in {sample.get('__url__')} has unknown member(s) {unknown}; "
            f"only {sorted(KNOWN_EXTENSIONS)} are read"
        )


def sample_meta(sample: dict) -> dict:
    """The sample's json metadata with a str caption (from the json, else from KEY.txt)."""
    check_members(sample)
    meta = json.loads(sample["json"]) if "json" in sample else {}
    if not isinstance(meta, dict):
        raise ValueError(f"sample {sample['__key__']!r}: json must be an object, got {type(meta).__name__}")
    if "caption" not in meta:
        if "txt" not in sample:
            raise ValueError(f"sample {sample['__key__']!r} has no caption (json 'caption' or KEY.txt)")
        meta["caption"] = bytes(sample["txt"]).decode("utf-8").strip()
    return meta


class SkipCounter:
    """A webdataset exception handler that counts and logs skipped samples; raises after too many in a row."""

    def __init__(self, max_consecutive: int = 1000, warn_first: int = 10):
        self.max_consecutive = max_consecutive
        self.warn_first = warn_first
        self.total = 0
        self.pending = 0
        self.consecutive = 0

    def __call__(self, exn: BaseException) -> bool:
        self.total += 1
        self.pending += 1
        self.consecutive += 1
        if self.total <= self.warn_first or self.total % 100 == 0:
            logger.warning("skipped sample #%d: %s: %s", self.total, type(exn).__name__, exn)
        if self.consecutive > self.max_consecutive:
            raise RuntimeError(f"{self.consecutive} samples in a row were unreadable; check the shards") from exn
        return True

    def ok(self) -> None:
        """Record a good sample."""
        self.consecutive = 0

    def take(self) -> int:
        """Skips since the last call."""
        n, self.pending = self.pending, 0
        return n


def _open_shard(url: str):
    """Local files are opened directly (so WDS_SECURE=1 still reads them); other URLs go through webdataset's gopen,
    which applies WDS_SECURE itself."""
    return wds.gopen(url) if "://" in url else open(url, "rb")


def read_samples(urls: Iterable[str], handler=wds.reraise_exception) -> Iterator[dict]:
    """Raw samples (`__key__`, `__url__`, extension -> bytes) of the shards in order; nothing is decoded.

    A shard that fails part-way (truncated, unreadable) makes one handler call and loses only its unfinished sample.
    """
    for url in urls:
        sample = None
        try:
            with _open_shard(url) as stream:
                for member in wds.tariterators.tar_file_iterator(stream):
                    key, ext = wds.tariterators.base_plus_ext(member["fname"])
                    if key is None:
                        continue
                    if sample is not None and key != sample["__key__"]:
                        yield sample
                        sample = None
                    sample = sample or {"__key__": key, "__url__": url}
                    if ext.lower() in sample:
                        raise ValueError(f"duplicate member {member['fname']} in {url}")
                    sample[ext.lower()] = member["data"]
            if sample is not None:
                yield sample
        except (OSError, tarfile.TarError, ValueError) as exn:
            if not handler(ValueError(f"shard {url}: {type(exn).__name__}: {exn}")):
                raise


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


class ShardWriter:
    """Writes samples to OUT/PREFIX-000000.tar, ... rolled by count and size (name=...: one shard of that name).

    Each shard is written as `*.tar.tmp` and renamed when complete, so a crash never leaves a partial `.tar`.
    """

    def __init__(
        self,
        out_dir: str | Path,
        prefix: str = "shard",
        max_count: int = 100,
        max_size: int = 1 << 30,
        name: str | None = None,
    ):
        if max_count < 1 or max_size < 1:
            raise ValueError(f"max_count={max_count} and max_size={max_size} must be positive")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.prefix, self.max_count, self.max_size, self.name = prefix, max_count, max_size, name
        self.shards: list[tuple[Path, int]] = []
        self._file = self._tar = None
        self._count = self._size = 0

    def _path(self) -> Path:
        if self.name is not None:
            return self.out_dir / self.name
        return self.out_dir / f"{self.prefix}-{len(self.shards):06d}.tar"

    def write(self, sample: dict[str, bytes]) -> None:
        """Write one sample: {"__key__": key, ext: bytes, ...}."""
        if self._tar is None:
            self._file = open(self._path().with_suffix(".tar.tmp"), "wb")
            self._tar = wds.TarWriter(self._file, encoder=False, mtime=SHARD_MTIME)
            self._count = self._size = 0
        self._size += self._tar.write(sample)
        self._count += 1
        if self.name is None and (self._count >= self.max_count or self._size >= self.max_size):
            self._finish()

    def _finish(self) -> None:
        self._tar.close()
        self._file.close()
        path = self._path()
        os.replace(path.with_suffix(".tar.tmp"), path)
        self.shards.append((path, self._count))
        self._file = self._tar = None

    def close(self) -> None:
        """Complete the current shard."""
        if self._tar is not None:
            self._finish()

    def abort(self) -> None:
        """Drop the incomplete shard."""
        if self._tar is not None:
            self._tar.close()
            self._file.close()
            self._path().with_suffix(".tar.tmp").unlink(missing_ok=True)
            self._file = self._tar = None

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, *_) -> None:
        self.abort() if exc_type is not None else self.close()


def shard_bytes(meta: dict) -> bytes:
    """Canonical json bytes of sample metadata."""
    return json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8")


# --------------------------------------------------------------------------------------------------
# Building shards from videos
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoItem:
    """One source video: path, caption, the name recorded in the shards (relative path) and extra json metadata."""

    path: Path
    caption: str
    name: str
    meta: dict = field(default_factory=dict)


@dataclass
class BuildReport:
    """What a build wrote and what it skipped (name, reason)."""

    videos: int = 0
    clips: int = 0
    shards: list[tuple[Path, int]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def find_videos(
    videos_dir: str | Path, captions: str | Path | None = None
) -> tuple[list[VideoItem], list[tuple[str, str]]]:
    """Videos with captions, sorted by name, and (name, reason) of those without.

    Captions come from a jsonl file of {"path", "caption"} (paths relative to videos_dir or absolute; defaults to
    videos_dir/captions.jsonl when present), else from a sidecar VIDEO.txt.
    """
    root = Path(videos_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"videos directory {root} does not exist")
    captions = Path(captions) if captions is not None else root / "captions.jsonl"
    items, skipped = [], []
    if captions.is_file():
        with open(captions, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                entry = json.loads(line)
                if not isinstance(entry, dict) or not {"path", "caption"} <= entry.keys():
                    raise ValueError(f"{captions}:{n}: each line must be an object with 'path' and 'caption'")
                path = Path(entry["path"]) if Path(entry["path"]).is_absolute() else root / entry["path"]
                name = os.path.relpath(path, root) if path.is_relative_to(root) else path.name
                items.append(VideoItem(path, str(entry["caption"]).strip(), Path(name).as_posix()))
    elif captions != root / "captions.jsonl":
        raise FileNotFoundError(f"captions file {captions} does not exist")
    else:
        for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES):
            name = path.relative_to(root).as_posix()
            sidecar = path.with_suffix(".txt")
            if sidecar.is_file() and sidecar.read_text(encoding="utf-8").strip():
                items.append(VideoItem(path, sidecar.read_text(encoding="utf-8").strip(), name))
            else:
                skipped.append((name, f"no caption ({sidecar.name} missing or empty, no captions.jsonl)"))
    return sorted(items, key=lambda item: item.name), skipped


def clip_key(name: str, index: int) -> str:
    """Stable WebDataset key (no dots or slashes) of clip index of a source."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", name.rsplit(".", 1)[0]).strip("_")[-40:] or "video"
    return f"{slug}-{hashlib.sha1(name.encode()).hexdigest()[:8]}-{index:04d}"


def _sampled_frames(frames: Iterator, source_fps: float, fps: float | None) -> Iterator:
    """Frames at the target fps (nearest source frame in time; every frame when fps is None)."""
    if fps is None:
        yield from (frame for _, frame in frames)
        return
    half = 0.5 / source_fps if source_fps > 0 else 0.0
    prev, t0, t, j = None, None, 0.0, 0
    for i, (time, frame) in enumerate(frames):
        t = i / source_fps if time is None else time
        t0 = t if t0 is None else t0
        t -= t0
        while prev is not None and j / fps < t - half:
            yield prev
            j += 1
        prev = frame
    while prev is not None and j / fps < t + half:
        yield prev
        j += 1


def cut_clips(
    item: VideoItem,
    buckets: Sequence[Bucket],
    fps: float | None = None,
    max_clips: int | None = None,
    crf: int = 18,
    preset: str = "medium",
    threads: int = 1,
) -> Iterator[dict[str, bytes]]:
    """Consecutive clips of one video as shard samples: nearest-aspect bucket, cover-resize, centre crop, h264."""
    with open_video(item.path) as (container, stream):
        source_fps = stream_fps(stream)
        out_fps = fps or source_fps
        if out_fps <= 0:
            raise ValueError("unknown frame rate; pass --fps")
        height, width = stream.height, stream.width
        bucket = nearest_bucket(buckets, height, width)
        size = cover_size(height, width, bucket.height, bucket.width)
        top, left = center_offset(size[0], bucket.height), center_offset(size[1], bucket.width)
        writer = None
        frames = ((frame.time, frame) for frame in container.decode(stream))
        try:
            for k, frame in enumerate(_sampled_frames(frames, source_fps, fps)):
                clip, pos = divmod(k, bucket.frames)
                if max_clips is not None and clip >= max_clips:
                    break
                if pos == 0:
                    writer = H264Writer(bucket.height, bucket.width, out_fps, crf, preset, threads)
                writer.write(to_rgb(frame, size)[top : top + bucket.height, left : left + bucket.width])
                if pos == bucket.frames - 1:
                    meta = {
                        "caption": item.caption,
                        "fps": out_fps,
                        "height": bucket.height,
                        "width": bucket.width,
                        "frames": bucket.frames,
                        "source": item.name,
                        "source_size": [height, width],
                        "clip": clip,
                        "clip_start": round(clip * bucket.frames / out_fps, 6),
                    } | item.meta
                    yield {"__key__": clip_key(item.name, clip), "mp4": writer.finish(), "json": shard_bytes(meta)}
                    writer = None
        finally:
            if writer is not None:
                writer.close()


def build_shards(
    items: Sequence[VideoItem],
    out_dir: str | Path,
    buckets: Sequence[Bucket],
    fps: float | None = None,
    max_clips: int | None = None,
    prefix: str = "shard",
    max_count: int = 100,
    max_size: int = 1 << 30,
    crf: int = 18,
    preset: str = "medium",
    threads: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> BuildReport:
    """Cut every video into clips and write them to shards; unreadable or too-short videos are skipped and listed."""
    out_dir = Path(out_dir)
    existing = sorted(out_dir.glob(f"{prefix}-*.tar"))
    if existing and not overwrite:
        raise FileExistsError(
            f"{out_dir} already holds {len(existing)} {prefix}-*.tar shards; pass --overwrite or another --out"
        )
    for path in existing:
        path.unlink()
    report = BuildReport()
    with ShardWriter(out_dir, prefix, max_count, max_size) as writer:
        bar = tqdm(items, desc=f"build {out_dir}", unit="video", disable=not progress)
        for item in bar:
            try:
                clips = list(cut_clips(item, buckets, fps, max_clips, crf, preset, threads))
            except (av.FFmpegError, ValueError, OSError) as exn:
                report.skipped.append((item.name, f"unreadable: {type(exn).__name__}: {exn}"))
                continue
            if not clips:
                frames = min(b.frames for b in buckets)
                reason = f"too short: fewer than {frames} frames" + (f" at {fps} fps" if fps else "")
                report.skipped.append((item.name, reason))
                continue
            for sample in clips:
                writer.write(sample)
            report.videos += 1
            report.clips += len(clips)
            bar.set_postfix(clips=report.clips, skipped=len(report.skipped))
    report.shards = writer.shards
    for name, reason in report.skipped:
        logger.warning("skipped %s: %s", name, reason)
    return report
