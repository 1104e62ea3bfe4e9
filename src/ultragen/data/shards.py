"""WebDataset shards: sample format, safe reading (known extensions only), atomic shard writing, and `data build`.

A sample is `KEY.mp4` (h264) + `KEY.json` (caption, fps, width, height, frames, source, clip_start), optionally
`KEY.latents.safetensors` and `KEY.text.safetensors` (precomputed) or a `KEY.txt` caption. Nothing is unpickled.
"""

from __future__ import annotations

import glob
import hashlib
import itertools
import json
import logging
import os
import re
import tarfile
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import av
import webdataset as wds
from tqdm import tqdm

from ultragen.data.buckets import Bucket, nearest_bucket
from ultragen.data.video import (
    H264Writer,
    center_offset,
    cover_size,
    display_orientation,
    open_video,
    orient,
    stream_fps,
    to_rgb,
    transposes,
)

logger = logging.getLogger(__name__)

KNOWN_EXTENSIONS = frozenset({"mp4", "json", "txt", "latents.safetensors", "text.safetensors"})
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm")
SHARD_MTIME = 0.0  # fixed tar member time: identical inputs give identical shard bytes
MAX_KEY_LENGTH = 200
MAX_CAPTION_CHARS = 2000


# --------------------------------------------------------------------------------------------------
# Skipped inputs and keys
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Skip:
    """One skipped input: where (a file, `captions.jsonl:LINE` or `SHARD:KEY`), the stage, a short reason (the row of
    the count table) and the detail."""

    source: str
    stage: str
    reason: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.source}: {self.stage}: {self.reason}" + (f" ({self.detail})" if self.detail else "")


class SkipError(ValueError):
    """Raised for an input that is skipped; carries its Skip record."""

    def __init__(self, skip: Skip):
        super().__init__(str(skip))
        self.skip = skip


def as_skip(exn: BaseException) -> Skip:
    """The Skip of an exception: its own record for a SkipError, else one named by the exception type."""
    return exn.skip if isinstance(exn, SkipError) else Skip("unknown input", "read", type(exn).__name__, str(exn))


def key_problem(key: object) -> str | None:
    """Why a sample key is unsafe (path separators, dots, control characters, empty or too long), None when safe."""
    if not isinstance(key, str) or not key:
        return "empty or not a string"
    if len(key) > MAX_KEY_LENGTH:
        return f"longer than {MAX_KEY_LENGTH} characters"
    if "/" in key or "\\" in key:
        return "contains a path separator"
    if "." in key:
        return "contains a dot ('..' or an extension)"
    if any(unicodedata.category(c) == "Cc" for c in key):
        return "contains a control character"
    return None


def truncate_caption(caption: str, max_chars: int = MAX_CAPTION_CHARS) -> tuple[str, bool]:
    """The caption cut to at most max_chars at a word boundary (a hard cut for one long word); True when cut."""
    if len(caption) <= max_chars:
        return caption, False
    cut = caption.rfind(" ", 0, max_chars + 1)
    return (caption[:cut] if cut > 0 else caption[:max_chars]).rstrip(), True


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


def sample_source(sample: dict) -> str:
    """`SHARD:KEY` of a raw sample (non-printable characters escaped)."""
    return f"{sample.get('__url__')}:{ascii(str(sample.get('__key__')))[1:-1]}"


def check_members(sample: dict) -> None:
    """Raise unless every member of the sample has a known extension (pickle and other formats are never read)."""
    unknown = sorted(k for k in sample if not k.startswith("__") and k not in KNOWN_EXTENSIONS)
    if unknown:
        detail = f"{unknown}; only {sorted(KNOWN_EXTENSIONS)} are read"
        raise SkipError(Skip(sample_source(sample), "parse", "unknown member", detail))


def sample_meta(sample: dict) -> dict:
    """The sample's json metadata with a str caption (from the json, else from KEY.txt)."""
    check_members(sample)
    source = sample_source(sample)
    try:
        meta = json.loads(sample["json"]) if "json" in sample else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as exn:
        raise SkipError(Skip(source, "parse", "bad json", str(exn))) from exn
    if not isinstance(meta, dict):
        raise SkipError(Skip(source, "parse", "bad json", f"must be an object, got {type(meta).__name__}"))
    if "caption" not in meta:
        if "txt" not in sample:
            raise SkipError(Skip(source, "parse", "no caption", "no json 'caption' and no KEY.txt"))
        try:
            meta["caption"] = bytes(sample["txt"]).decode("utf-8").strip()
        except UnicodeDecodeError as exn:
            raise SkipError(Skip(source, "parse", "bad caption", f"KEY.txt is not utf-8: {exn}")) from exn
    return meta


class SkipCounter:
    """A webdataset exception handler that counts skipped samples per reason and logs them; raises after too many
    in a row."""

    def __init__(self, max_consecutive: int = 1000, warn_first: int = 10):
        self.max_consecutive = max_consecutive
        self.warn_first = warn_first
        self.total = 0
        self.pending = 0
        self.consecutive = 0
        self.reasons: Counter[str] = Counter()

    def __call__(self, exn: BaseException) -> bool:
        skip = as_skip(exn)
        self.total += 1
        self.pending += 1
        self.consecutive += 1
        self.reasons[f"{skip.stage}: {skip.reason}"] += 1
        if self.total <= self.warn_first or self.total % 100 == 0:
            logger.warning("skipped sample #%d: %s", self.total, skip)
        if self.consecutive > self.max_consecutive:
            raise RuntimeError(
                f"{self.consecutive} samples in a row were unreadable ({self.summary()}); check the shards"
            ) from exn
        return True

    def ok(self) -> None:
        """Record a good sample."""
        self.consecutive = 0

    def take(self) -> int:
        """Skips since the last call."""
        n, self.pending = self.pending, 0
        return n

    def summary(self) -> str:
        """Counts per reason, most frequent first, e.g. '2 × parse: bad json, 1 × decode: ValueError'."""
        return ", ".join(f"{n} × {reason}" for reason, n in self.reasons.most_common()) or "nothing skipped"


def _open_shard(url: str):
    """Local files are opened directly (so WDS_SECURE=1 still reads them); other URLs go through webdataset's gopen,
    which applies WDS_SECURE itself."""
    return wds.gopen(url) if "://" in url else open(url, "rb")


def read_samples(urls: Iterable[str], handler=wds.reraise_exception) -> Iterator[dict]:
    """Raw samples (`__key__`, `__url__`, extension -> bytes) of the shards in order; nothing is decoded.

    A shard that fails part-way (truncated, unreadable) makes one handler call and loses only its unfinished sample.
    A sample with an unsafe key (see `key_problem`) makes one handler call and is not yielded.
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
                        if _safe(sample, handler):
                            yield sample
                        sample = None
                    sample = sample or {"__key__": key, "__url__": url}
                    if ext.lower() in sample:
                        raise ValueError(f"duplicate member {member['fname']}")
                    sample[ext.lower()] = member["data"]
            if sample is not None and _safe(sample, handler):
                yield sample
        except SkipError:
            raise  # the handler re-raised a sample's error
        except (OSError, tarfile.TarError, ValueError) as exn:
            if not handler(SkipError(Skip(url, "read", "unreadable shard", f"{type(exn).__name__}: {exn}"))):
                raise


def _safe(sample: dict, handler) -> bool:
    """True for a safe key; otherwise one handler call (which may raise) and False."""
    problem = key_problem(sample["__key__"])
    if problem is None:
        return True
    if not handler(SkipError(Skip(sample_source(sample), "read", "unsafe key", problem))):
        raise SkipError(Skip(sample_source(sample), "read", "unsafe key", problem))
    return False


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
        """Write one sample: {"__key__": key, ext: bytes, ...}; raises SkipError, writing nothing, for an unsafe key
        or extension."""
        key = sample.get("__key__")
        problem = key_problem(key)
        bad_ext = [e for e in sample if not e.startswith("__") and not re.fullmatch(r"[a-z0-9_]+(\.[a-z0-9_]+)*", e)]
        if problem is not None or bad_ext:
            detail = problem if problem is not None else f"extension(s) {bad_ext} must be lowercase [a-z0-9_.]"
            raise SkipError(Skip(ascii(str(key))[1:-1], "write", "unsafe key", detail))
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
    caption_truncated: bool = False


@dataclass
class BuildReport:
    """What a build wrote, what it skipped and how many captions it truncated."""

    videos: int = 0
    clips: int = 0
    shards: list[tuple[Path, int]] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    captions_truncated: int = 0

    def counts(self) -> dict[str, int]:
        """Skips per `stage: reason`, most frequent first."""
        return dict(Counter(f"{s.stage}: {s.reason}" for s in self.skipped).most_common())

    def to_json(self) -> dict:
        """The machine-readable report (what `data build` writes as report.json)."""
        return {
            "videos": self.videos,
            "clips": self.clips,
            "shards": [{"path": str(path), "samples": count} for path, count in self.shards],
            "captions_truncated": self.captions_truncated,
            "skipped_counts": self.counts(),
            "skipped": [asdict(s) for s in self.skipped],
        }


def _video_paths(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())


def _jsonl_items(
    root: Path, captions: Path, max_caption_chars: int
) -> tuple[list[VideoItem], list[Skip]]:
    """Items of a captions jsonl; malformed lines, duplicates and missing files are skipped as `FILE:LINE`."""
    items: dict[Path, VideoItem] = {}
    lines: dict[Path, int] = {}  # accepted video -> its line
    listed: set[Path] = set()
    skipped = []
    with open(captions, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{captions}:{n}"
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as exn:
                skipped.append(Skip(where, "captions", "malformed jsonl line", str(exn)))
                continue
            if not isinstance(entry, dict) or not isinstance(entry.get("path"), str) or "caption" not in entry:
                detail = "each line must be an object with a string 'path' and a 'caption'"
                skipped.append(Skip(where, "captions", "malformed jsonl line", detail))
                continue
            path = Path(entry["path"]) if Path(entry["path"]).is_absolute() else root / entry["path"]
            name = Path(os.path.relpath(path, root) if path.is_relative_to(root) else path.name).as_posix()
            caption = entry["caption"].strip() if isinstance(entry["caption"], str) else ""
            listed.add(path.resolve())
            if not caption:
                skipped.append(Skip(where, "captions", "no caption", f"{name}: 'caption' must be a non-empty string"))
            elif path.resolve() in lines:
                detail = f"{name} is already captioned on line {lines[path.resolve()]}"
                skipped.append(Skip(where, "captions", "duplicate caption", detail))
            elif not path.is_file():
                skipped.append(Skip(name, "captions", "missing video", f"listed in {where}, no such file"))
            else:
                caption, cut = truncate_caption(caption, max_caption_chars)
                items[path.resolve()] = VideoItem(path, caption, name, caption_truncated=cut)
                lines[path.resolve()] = n
    for path in _video_paths(root):
        if path.resolve() not in listed:
            name = path.relative_to(root).as_posix()
            skipped.append(Skip(name, "captions", "no caption", f"not listed in {captions}"))
    return list(items.values()), skipped


def find_videos(
    videos_dir: str | Path, captions: str | Path | None = None, max_caption_chars: int = MAX_CAPTION_CHARS
) -> tuple[list[VideoItem], list[Skip]]:
    """Videos with captions, sorted by name, and the Skip records of everything left out.

    Captions come from a jsonl file of {"path", "caption"} (paths relative to videos_dir or absolute; defaults to
    videos_dir/captions.jsonl when present), else from a sidecar VIDEO.txt. Malformed or duplicate jsonl lines,
    listed files that do not exist and videos without a caption are skipped, never fatal. Captions longer than
    max_caption_chars are cut at a word boundary (`VideoItem.caption_truncated`).
    """
    root = Path(videos_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"videos directory {root} does not exist")
    if max_caption_chars < 1:
        raise ValueError(f"max_caption_chars={max_caption_chars} must be positive")
    captions = Path(captions) if captions is not None else root / "captions.jsonl"
    if captions.is_file():
        items, skipped = _jsonl_items(root, captions, max_caption_chars)
    elif captions != root / "captions.jsonl":
        raise FileNotFoundError(f"captions file {captions} does not exist")
    else:
        items, skipped = [], []
        for path in _video_paths(root):
            name = path.relative_to(root).as_posix()
            sidecar = path.with_suffix(".txt")
            text = sidecar.read_text(encoding="utf-8", errors="replace").strip() if sidecar.is_file() else ""
            if text:
                caption, cut = truncate_caption(text, max_caption_chars)
                items.append(VideoItem(path, caption, name, caption_truncated=cut))
            else:
                detail = f"{sidecar.name} missing or empty, no captions.jsonl"
                skipped.append(Skip(name, "captions", "no caption", detail))
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
    """Consecutive clips of one video as shard samples: display rotation and mirror flips applied (see
    `display_orientation`), nearest-aspect bucket, cover-resize, centre crop, h264."""
    with open_video(item.path) as (container, stream):
        source_fps = stream_fps(stream)
        out_fps = fps or source_fps
        if out_fps <= 0:
            raise SkipError(Skip(item.name, "decode", "unknown frame rate", "the stream stores none; pass --fps"))
        decoded = container.decode(stream)
        first = next(decoded, None)
        if first is None:
            return
        try:
            orientation = display_orientation(item.path, first)
        except ValueError as exn:
            raise SkipError(Skip(item.name, "decode", "unsupported display matrix", str(exn))) from exn
        height, width = (stream.width, stream.height) if transposes(orientation) else (stream.height, stream.width)
        bucket = nearest_bucket(buckets, height, width)
        size = cover_size(height, width, bucket.height, bucket.width)  # as displayed
        stored_size = size[::-1] if transposes(orientation) else size  # as decoded, before the rotation
        top, left = center_offset(size[0], bucket.height), center_offset(size[1], bucket.width)
        writer = None
        frames = ((frame.time, frame) for frame in itertools.chain([first], decoded))
        try:
            for k, frame in enumerate(_sampled_frames(frames, source_fps, fps)):
                clip, pos = divmod(k, bucket.frames)
                if max_clips is not None and clip >= max_clips:
                    break
                if pos == 0:
                    writer = H264Writer(bucket.height, bucket.width, out_fps, crf, preset, threads)
                image = orient(to_rgb(frame, stored_size), orientation)
                writer.write(image[top : top + bucket.height, left : left + bucket.width])
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
            decoded.close()  # before the container closes: a suspended decoder must not outlive it
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
    report = BuildReport(captions_truncated=sum(item.caption_truncated for item in items))
    with ShardWriter(out_dir, prefix, max_count, max_size) as writer:
        bar = tqdm(items, desc=f"build {out_dir}", unit="video", disable=not progress)
        for item in bar:
            try:
                clips = list(cut_clips(item, buckets, fps, max_clips, crf, preset, threads))
            except SkipError as exn:
                report.skipped.append(exn.skip)
                continue
            except (av.FFmpegError, ValueError, OSError) as exn:
                report.skipped.append(Skip(item.name, "decode", "unreadable", f"{type(exn).__name__}: {exn}"))
                continue
            if not clips:
                frames = min(b.frames for b in buckets)
                detail = f"fewer than {frames} frames" + (f" at {fps} fps" if fps else "")
                report.skipped.append(Skip(item.name, "cut", "too short", detail))
                continue
            for sample in clips:
                writer.write(sample)
            report.videos += 1
            report.clips += len(clips)
            bar.set_postfix(clips=report.clips, skipped=len(report.skipped))
    report.shards = writer.shards
    for skip in report.skipped:
        logger.warning("skipped %s", skip)
    return report
