"""`data build`: real clips -> deterministic shards; skipped inputs listed; atomic shard writing; shard specs."""

import json
import shutil
import tarfile

import numpy as np
import pytest

from ultragen.data.buckets import Bucket
from ultragen.data.demo import real_clip_dir
from ultragen.data.shards import (
    ShardWriter,
    Skip,
    VideoItem,
    build_shards,
    check_members,
    expand_shards,
    find_videos,
    read_samples,
    sample_meta,
)
from ultragen.data.video import center_offset, cover_size, decode_frames, encode_h264, probe

BUCKETS = [Bucket(112, 256, 9), Bucket(144, 176, 9)]


@pytest.fixture
def videos(tmp_path):
    """A folder with two real clips (one with a sidecar caption), a truncated file and a caption-less clip."""
    root = tmp_path / "videos"
    (root / "street").mkdir(parents=True)
    shutil.copy(real_clip_dir() / "bikes.mp4", root / "street" / "bikes.mp4")
    (root / "street" / "bikes.txt").write_text("cyclists and taxis at dusk\n")
    shutil.copy(real_clip_dir() / "carphone_pristine.mp4", root / "carphone.mov")
    (root / "carphone.txt").write_text("a man talks in a car")
    (root / "broken.mkv").write_bytes((real_clip_dir() / "bigbuckbunny.mp4").read_bytes()[:4000])
    (root / "broken.txt").write_text("never readable")
    shutil.copy(real_clip_dir() / "bigbuckbunny.mp4", root / "uncaptioned.webm")
    return root


def test_find_videos_sidecars_and_jsonl(videos, tmp_path):
    items, skipped = find_videos(videos)
    assert [i.name for i in items] == ["broken.mkv", "carphone.mov", "street/bikes.mp4"]
    assert items[2].caption == "cyclists and taxis at dusk"
    reason = "uncaptioned.txt missing or empty, no captions.jsonl"
    assert skipped == [Skip("uncaptioned.webm", "captions", "no caption", reason)]
    captions = tmp_path / "captions.jsonl"
    captions.write_text(json.dumps({"path": "uncaptioned.webm", "caption": "a rabbit"}) + "\n")
    items, skipped = find_videos(videos, captions)
    assert [(i.name, i.caption) for i in items] == [("uncaptioned.webm", "a rabbit")]
    assert [(s.source, s.reason) for s in skipped] == [
        (name, "no caption") for name in ["broken.mkv", "carphone.mov", "street/bikes.mp4"]
    ]


def test_build_real_clips_is_deterministic_and_lists_skips(videos, tmp_path):
    items, _ = find_videos(videos)
    kwargs = dict(buckets=BUCKETS, fps=8.0, max_clips=2, max_count=3, progress=False)
    report = build_shards(items, tmp_path / "a", **kwargs)
    again = build_shards(items, tmp_path / "b", **kwargs)
    assert report.videos == 2 and report.clips == 4 and [n for _, n in report.shards] == [3, 1]
    assert [(s.source, s.stage, s.reason) for s in report.skipped] == [("broken.mkv", "decode", "unreadable")]
    for (a, _), (b, _) in zip(report.shards, again.shards):
        assert a.read_bytes() == b.read_bytes()
    assert not list((tmp_path / "a").glob("*.tmp"))

    samples = list(read_samples(expand_shards(str(tmp_path / "a"))))
    assert len(samples) == 4 and all(set(s) == {"__key__", "__url__", "mp4", "json"} for s in samples)
    metas = {s["__key__"]: sample_meta(s) for s in samples}
    car = next(m for m in metas.values() if m["source"] == "carphone.mov")
    assert (car["height"], car["width"], car["frames"], car["fps"]) == (144, 176, 9, 8.0)  # native 176x144: exact bucket
    bikes = [m for m in metas.values() if m["source"] == "street/bikes.mp4"]
    assert [(m["height"], m["width"], m["clip"], m["clip_start"]) for m in bikes] == [(112, 256, 0, 0.0), (112, 256, 1, 1.125)]
    assert bikes[0]["source_size"] == [272, 640] and bikes[0]["caption"] == "cyclists and taxis at dusk"
    for s in samples:
        info, meta = probe(s["mp4"]), metas[s["__key__"]]
        assert (info.frames, info.height, info.width) == (meta["frames"], meta["height"], meta["width"])


def test_clip_content_is_the_resampled_centre_crop(tmp_path):
    """Clip frame k is source frame 2k (25 -> 12.5 fps) resized to cover 112x256 and centre-cropped."""
    item = VideoItem(real_clip_dir() / "bikes.mp4", "bikes", "bikes.mp4")
    report = build_shards([item], tmp_path, [Bucket(112, 256, 5)], fps=12.5, max_clips=1, progress=False)
    clip = next(read_samples([str(report.shards[0][0])]))["mp4"]
    got = decode_frames(clip, range(5), np.zeros((5, 112, 256, 3), np.uint8)).astype(float)
    size = cover_size(272, 640, 112, 256)
    top, left = center_offset(size[0], 112), center_offset(size[1], 256)
    want = decode_frames(item.path, [0, 2, 4, 6, 8], np.zeros((5, 112, 256, 3), np.uint8), top, left, resize=size)
    assert np.abs(got - want).mean() < 2  # h264 at crf 18
    shifted = decode_frames(item.path, [1, 3, 5, 7, 9], np.zeros((5, 112, 256, 3), np.uint8), top, left, resize=size)
    assert np.abs(got - shifted).mean() > np.abs(got - want).mean()


def test_too_short_videos_are_skipped(tmp_path):
    short = tmp_path / "short.mp4"
    short.write_bytes(encode_h264(np.zeros((4, 64, 64, 3), np.uint8), fps=8))
    report = build_shards([VideoItem(short, "dark", "short.mp4")], tmp_path / "out", [Bucket(64, 64, 9)], progress=False)
    assert report.clips == 0 and report.skipped == [Skip("short.mp4", "cut", "too short", "fewer than 9 frames")]


def test_existing_shards_need_overwrite(tmp_path):
    item = VideoItem(real_clip_dir() / "carphone_pristine.mp4", "car", "car.mp4")
    build_shards([item], tmp_path, [Bucket(144, 176, 9)], max_clips=1, progress=False)
    with pytest.raises(FileExistsError, match="--overwrite"):
        build_shards([item], tmp_path, [Bucket(144, 176, 9)], max_clips=1, progress=False)
    report = build_shards([item], tmp_path, [Bucket(144, 176, 9)], max_clips=1, progress=False, overwrite=True)
    assert report.clips == 1


def test_writer_never_leaves_a_partial_tar(tmp_path):
    with pytest.raises(RuntimeError, match="disk full"):
        with ShardWriter(tmp_path, max_count=2) as writer:
            for i in range(3):
                writer.write({"__key__": f"k{i}", "json": b"{}"})
            raise RuntimeError("disk full")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-000000.tar"]  # the complete one only
    with tarfile.open(tmp_path / "shard-000000.tar") as tar:
        assert tar.getnames() == ["k0.json", "k1.json"] and {m.mtime for m in tar.getmembers()} == {0}


def test_shard_specs_and_member_checks(tmp_path):
    for i in range(3):
        (tmp_path / f"s-{i:03d}.tar").write_bytes(b"")
    names = [str(tmp_path / f"s-{i:03d}.tar") for i in range(3)]
    assert expand_shards(str(tmp_path)) == names
    assert expand_shards(str(tmp_path / "s-*.tar")) == names
    assert expand_shards(str(tmp_path / "s-{000..001}.tar")) == names[:2]
    assert expand_shards([names[2], names[0]]) == [names[2], names[0]]
    with pytest.raises(FileNotFoundError, match="ultragen data build"):
        expand_shards(str(tmp_path / "missing-*.tar"))
    with pytest.raises(ValueError, match=r"unknown member \(\['pyd'\]"):
        check_members({"__key__": "a", "mp4": b"", "pyd": b""})
    assert sample_meta({"__key__": "a", "txt": b" a caption \n"}) == {"caption": "a caption"}
    with pytest.raises(ValueError, match="no caption"):
        sample_meta({"__key__": "a", "json": b"{}"})
