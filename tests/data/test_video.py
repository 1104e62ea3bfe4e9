"""PyAV decode/encode helpers: shape checks, frame-accurate decode with crop/resize, deterministic h264."""

import av
import numpy as np
import pytest

from ultragen.data.demo import real_clip_dir
from ultragen.data.video import (
    H264Writer,
    check_clip_shape,
    cover_size,
    decode_frames,
    encode_h264,
    frame_indices,
    frame_step,
    max_frames,
    open_video,
    parse_size,
    probe,
)


def ramp_frames(frames: int, height: int, width: int) -> np.ndarray:
    """Smooth moving gradient (h264 keeps it within a few levels)."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack(
        [np.stack([(x * 2 + 8 * f) % 256, (y * 2) % 256, np.full_like(x, 40 + 10 * f)], -1) for f in range(frames)]
    ).astype(np.uint8)


@pytest.mark.parametrize(
    "args, match",
    [((80, 64, 64), r"frames=80 must be 4k\+1, e.g. 77 or 81"), ((9, 1080, 64), r"height=1080 .* multiple of 16, e.g. 1072"),
     ((9, 64, 8), r"width=8 .* multiple of 16, e.g. 16")],
)
def test_clip_shape_errors_name_value_and_fix(args, match):
    with pytest.raises(ValueError, match=match):
        check_clip_shape(*args)
    check_clip_shape(81, 1088, 1920)


def test_parse_and_cover_size():
    assert parse_size("1088x1920") == (1088, 1920)
    with pytest.raises(ValueError, match="HEIGHTxWIDTH"):
        parse_size("1088")
    h, w = cover_size(720, 1280, 272, 640)  # wider target: width decides
    assert w == 640 and h >= 272 and abs(h / w - 720 / 1280) < 0.01


def test_round_trip_is_close_and_bit_identical_on_repeat():
    video = ramp_frames(9, 64, 96)
    data = encode_h264(video, fps=8)
    assert data == encode_h264(video, fps=8)
    info = probe(data)
    assert (info.frames, info.height, info.width, info.fps) == (9, 64, 96, 8.0)
    out = decode_frames(data, range(9), np.zeros_like(video))
    assert np.abs(out.astype(int) - video).mean() < 3


def test_decode_indices_repeat_crop_and_resize():
    video = ramp_frames(9, 64, 96)
    data = encode_h264(video, fps=8, crf=0)
    full = decode_frames(data, range(9), np.zeros_like(video))
    out = decode_frames(data, [1, 1, 4, 8], np.zeros((4, 32, 48, 3), np.uint8), top=16, left=24)
    np.testing.assert_array_equal(out, full[[1, 1, 4, 8], 16:48, 24:72])
    small = decode_frames(data, [0], np.zeros((1, 32, 48, 3), np.uint8), resize=(32, 48))
    assert abs(small.astype(float).mean() - full[0].astype(float).mean()) < 2


def test_decode_errors_on_short_or_truncated_video():
    data = encode_h264(ramp_frames(5, 32, 32), fps=8)
    with pytest.raises(ValueError, match="ended after 5 frames but frame 7"):
        decode_frames(data, [0, 7], np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="sorted"):
        decode_frames(data, [3, 1], np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises((av.FFmpegError, ValueError)):
        decode_frames(data[: len(data) // 3], range(5), np.zeros((5, 32, 32, 3), np.uint8))


def test_writer_streams_and_reads_back_real_clip_size():
    with open_video(real_clip_dir() / "carphone_pristine.mp4") as (container, stream):
        frames = [f.to_ndarray(format="rgb24") for f, _ in zip(container.decode(stream), range(5))]
    writer = H264Writer(144, 176, fps=30)
    for image in frames:
        writer.write(image)
    data = writer.finish()
    out = decode_frames(data, range(5), np.zeros((5, 144, 176, 3), np.uint8))
    assert writer.frames == 5 and np.abs(out.astype(int) - np.stack(frames)).mean() < 4


def test_frame_sampling():
    assert frame_step(25.0, None, 2) == 2.0
    assert frame_step(24.0, 8.0, 1) == 3.0
    assert frame_indices(5, 3.0, start=2) == [2, 5, 8, 11, 14]
    assert max_frames(13, 3.0) == 5 and max_frames(12, 3.0) == 4
    with pytest.raises(ValueError, match="no frame rate"):
        frame_step(0.0, 8.0, 1)
