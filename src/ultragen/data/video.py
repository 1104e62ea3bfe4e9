"""PyAV video I/O from bytes or paths: shape checks, frame-accurate decode with crop/resize, streaming h264 encode."""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np

VideoSource = bytes | str | Path


# --------------------------------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------------------------------


def check_clip_shape(frames: int, height: int, width: int, temporal_factor: int = 4, size_multiple: int = 16) -> None:
    """Raise naming the bad value and a fix unless frames = temporal_factor·k + 1 and sizes are size_multiple·n."""
    if frames < 1 or (frames - 1) % temporal_factor:
        lo = max((frames - 1) // temporal_factor * temporal_factor + 1, 1)
        raise ValueError(f"frames={frames} must be {temporal_factor}k+1, e.g. {lo} or {lo + temporal_factor}")
    for name, size in (("height", height), ("width", width)):
        if size < size_multiple or size % size_multiple:
            fix = max(size // size_multiple, 1) * size_multiple
            raise ValueError(f"{name}={size} must be a positive multiple of {size_multiple}, e.g. {fix}")


def parse_size(text: str) -> tuple[int, int]:
    """Parse 'HxW' (e.g. '1088x1920') into (height, width)."""
    parts = text.lower().replace("×", "x").split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"size {text!r} is not of the form HEIGHTxWIDTH, e.g. 1088x1920")
    return int(parts[0]), int(parts[1])


def cover_size(height: int, width: int, target_height: int, target_width: int) -> tuple[int, int]:
    """Smallest (h, w) with the source aspect ratio that covers (target_height, target_width)."""
    scale = max(target_height / height, target_width / width)
    return max(target_height, round(height * scale)), max(target_width, round(width * scale))


def center_offset(size: int, crop: int) -> int:
    """Offset of a centred crop of length crop inside size."""
    return (size - crop) // 2


# --------------------------------------------------------------------------------------------------
# Decode
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoInfo:
    """Stream metadata of one video."""

    frames: int
    fps: float
    height: int
    width: int


@contextmanager
def open_video(source: VideoSource, threads: int = 0) -> Iterator[tuple[av.container.InputContainer, av.VideoStream]]:
    """Open a video from bytes or a path; yields (container, first video stream) with frame threading on."""
    in_memory = isinstance(source, (bytes, bytearray, memoryview))
    with av.open(io.BytesIO(source) if in_memory else str(source)) as container:
        if not container.streams.video:
            raise ValueError("the file has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = threads
        yield container, stream


def stream_fps(stream: av.VideoStream) -> float:
    """Average frame rate of a stream, 0 when unknown."""
    return float(stream.average_rate or stream.guessed_rate or 0)


def probe(source: VideoSource) -> VideoInfo:
    """Frame count, fps and size; counts frames by decoding when the container does not store them."""
    with open_video(source) as (container, stream):
        frames = stream.frames or sum(1 for _ in container.decode(stream))
        return VideoInfo(frames, stream_fps(stream), stream.height, stream.width)


def to_rgb(frame: av.VideoFrame, size: tuple[int, int] | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a frame, resized to size=(h, w) when given (area when shrinking, bicubic otherwise)."""
    if size is None or size == (frame.height, frame.width):
        return frame.to_ndarray(format="rgb24")
    shrink = size[0] * size[1] < frame.height * frame.width
    return frame.reformat(
        width=size[1], height=size[0], format="rgb24", interpolation="AREA" if shrink else "BICUBIC"
    ).to_ndarray()


# --------------------------------------------------------------------------------------------------
# Display orientation (rotation and flips from the stream's display matrix)
# --------------------------------------------------------------------------------------------------

# (a, b, c, d) of the display matrix, each -1, 0 or 1: a pixel at (x, y) is shown at (ax + cy, bx + dy)
Orientation = tuple[int, int, int, int]


# counterclockwise display rotation (degrees mod 360) -> its display matrix
QUARTER_TURNS: dict[int, Orientation | None] = {0: None, 90: (0, -1, 1, 0), 180: (-1, 0, 0, -1), 270: (0, 1, -1, 0)}


def display_orientation(source: VideoSource, frame: av.VideoFrame) -> Orientation | None:
    """How the first video stream of `source` is to be shown (rotation and mirror flips), None for as stored.

    MP4/MOV (ISO BMFF): the display matrix of the first video track's `tkhd` box, read from the file itself, so a
    mirrored clip is flipped (FFmpeg reports a horizontal mirror as `rotation` 180). Other containers: the stream's
    display rotation (`frame.rotation`), which is all they carry. Reading `frame.side_data` for the matrix made
    forked DataLoader workers crash later with PyAV 18, hence the box reader. Raises ValueError for a matrix that
    is not a quarter turn or a flip (shear, scale, 45 degrees).
    """
    handle = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else open(source, "rb")
    with handle:
        matrix = mp4_display_matrix(handle)
    if matrix is None:
        rotation = frame.rotation
        if rotation % 90:
            raise ValueError(f"display rotation of {rotation} degrees is not a multiple of 90")
        return QUARTER_TURNS[int(rotation) % 360]
    a, b, c, d = (v / 65536 for v in matrix)
    if any(v not in (-1.0, 0.0, 1.0) for v in (a, b, c, d)) or abs(a * d - b * c) != 1.0:
        raise ValueError(f"display matrix {[a, b, c, d]} is not a quarter turn or a mirror flip")
    orientation = (int(a), int(b), int(c), int(d))
    return None if orientation == (1, 0, 0, 1) else orientation


def iso_boxes(f: BinaryIO, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, body start, box end) of the ISO BMFF boxes between the file position and `end`; stops at a bad size."""
    while f.tell() + 8 <= end:
        start = f.tell()
        size, kind = struct.unpack(">I4s", f.read(8))
        header = 8
        if size == 1:
            (size,), header = struct.unpack(">Q", f.read(8)), 16
        elif size == 0:
            size = end - start
        if size < header or start + size > end:
            return
        yield kind, start + header, start + size
        f.seek(start + size)


def mp4_display_matrix(f: BinaryIO) -> tuple[int, int, int, int] | None:
    """(a, b, c, d) in 16.16 fixed point of the first video track's `tkhd` matrix; None when `f` is not ISO BMFF
    (its first box is not `ftyp`) or has no video track. A pixel at (x, y) is shown at (ax + cy, bx + dy)."""
    end = f.seek(0, io.SEEK_END)
    f.seek(0)
    top = iso_boxes(f, end)
    if next(top, (None,))[0] != b"ftyp":
        return None
    for kind, body, stop in list(top):
        if kind != b"moov":
            continue
        f.seek(body)
        for trak, trak_body, trak_end in list(iso_boxes(f, stop)):
            if trak != b"trak":
                continue
            f.seek(trak_body)
            children = {k: (b, e) for k, b, e in iso_boxes(f, trak_end)}
            if b"tkhd" not in children or not is_video_track(f, children.get(b"mdia")):
                continue
            tkhd = children[b"tkhd"][0]
            f.seek(tkhd)
            version = f.read(1)[0]
            f.seek(tkhd + 4 + (32 if version == 1 else 20) + 16)  # times, track id, duration; layer .. reserved
            a, b, _, c, d = struct.unpack(">5i", f.read(20))
            return a, b, c, d
    return None


def is_video_track(f: BinaryIO, mdia: tuple[int, int] | None) -> bool:
    """True when the `mdia` box (body start, end) has a `hdlr` of handler type `vide`."""
    if mdia is None:
        return False
    f.seek(mdia[0])
    for kind, body, _ in list(iso_boxes(f, mdia[1])):
        if kind == b"hdlr":
            f.seek(body + 8)  # version/flags, pre_defined
            return f.read(4) == b"vide"
    return False


def transposes(orientation: Orientation | None) -> bool:
    """True when the orientation swaps width and height (a quarter turn)."""
    return orientation is not None and orientation[0] == 0


def orient(image: np.ndarray, orientation: Orientation | None) -> np.ndarray:
    """(H, W, C) image as displayed: the display matrix applied (a view, no copy)."""
    if orientation is None:
        return image
    a, b, c, d = orientation
    if a == 0:  # x' = c·y, y' = b·x
        image = image.transpose(1, 0, 2)
        return image[:: -1 if b < 0 else 1, :: -1 if c < 0 else 1]
    return image[:: -1 if d < 0 else 1, :: -1 if a < 0 else 1]  # x' = a·x, y' = d·y


def decode_frames(
    source: VideoSource,
    indices: Sequence[int],
    out: np.ndarray,
    top: int = 0,
    left: int = 0,
    resize: tuple[int, int] | None = None,
    threads: int = 0,
) -> np.ndarray:
    """Decode frames at sorted indices into out (F, h, w, 3) uint8, cropping at (top, left) after an optional resize.

    Repeated indices repeat a frame. Raises ValueError when the stream ends before the last index.
    """
    if len(indices) != len(out):
        raise ValueError(f"{len(indices)} frame indices for an output of {len(out)} frames")
    if len(indices) and any(b < a for a, b in zip(indices[:-1], indices[1:])):
        raise ValueError(f"frame indices must be sorted, got {list(indices)}")
    h, w = out.shape[1:3]
    pos, seen = 0, 0
    with open_video(source, threads) as (container, stream):
        for i, frame in enumerate(container.decode(stream)):
            seen = i + 1
            if pos == len(indices):
                break
            if i < indices[pos]:
                continue
            image = to_rgb(frame, resize)
            if image.shape[0] < top + h or image.shape[1] < left + w:
                raise ValueError(f"crop {h}x{w} at ({top}, {left}) exceeds the {image.shape[0]}x{image.shape[1]} frame")
            while pos < len(indices) and indices[pos] == i:
                out[pos] = image[top : top + h, left : left + w]
                pos += 1
    if pos < len(indices):
        raise ValueError(f"video ended after {seen} frames but frame {indices[pos]} was requested")
    return out


def frame_step(source_fps: float, fps: float | None, stride: int) -> float:
    """Source frames per sampled frame: stride, or source_fps / fps when a target fps is given."""
    if fps is None:
        return float(stride)
    if source_fps <= 0:
        raise ValueError("the clip has no frame rate; sample with frame_stride instead of fps")
    return source_fps / fps


def max_frames(source_frames: int, step: float) -> int:
    """Longest sampled clip that fits in source_frames at this step."""
    return int((source_frames - 1) / step + 1e-9) + 1 if source_frames > 0 else 0


def frame_indices(frames: int, step: float, start: int = 0) -> list[int]:
    """Source indices of frames sampled every step source frames from start."""
    return [start + round(k * step) for k in range(frames)]


# --------------------------------------------------------------------------------------------------
# Encode
# --------------------------------------------------------------------------------------------------


class H264Writer:
    """Streaming h264 (yuv420p) mp4 encoder into memory: write RGB frames one by one, finish() returns the bytes.

    Output is bit-identical for identical input: frames carry explicit timestamps and x264's macroblock-tree rate
    control is off (with it, this x264 build varies from run to run on small frames). threads=0 lets x264 choose.
    """

    def __init__(self, height: int, width: int, fps: float, crf: int = 18, preset: str = "medium", threads: int = 1):
        self._buffer = io.BytesIO()
        self._container = av.open(self._buffer, "w", format="mp4")
        rate = Fraction(fps).limit_denominator(1001)
        self._stream = self._container.add_stream("libx264", rate=rate)
        self._stream.height, self._stream.width = height, width
        self._stream.pix_fmt = "yuv420p"
        self._stream.options = {
            "crf": str(crf), "preset": preset, "threads": str(threads), "x264-params": "no-mbtree=1"
        }
        self._time_base = 1 / rate
        self.frames = 0

    def write(self, image: np.ndarray) -> None:
        """Append one (H, W, 3) uint8 RGB frame."""
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        frame.pts, frame.time_base = self.frames, self._time_base
        self._container.mux(self._stream.encode(frame))
        self.frames += 1

    def finish(self) -> bytes:
        """Flush the encoder and return the mp4 bytes."""
        self._container.mux(self._stream.encode(None))
        self._container.close()
        return self._buffer.getvalue()

    def close(self) -> None:
        """Release the encoder without producing output (after an error)."""
        self._container.close()


def encode_h264(
    frames: Sequence[np.ndarray] | np.ndarray, fps: float, crf: int = 18, preset: str = "medium", threads: int = 1
) -> bytes:
    """Encode (F, H, W, 3) uint8 RGB frames to h264 mp4 bytes."""
    writer = H264Writer(frames[0].shape[0], frames[0].shape[1], fps, crf, preset, threads)
    for image in frames:
        writer.write(image)
    return writer.finish()

