"""Bad input, explained: one-line argument errors (exit 2), caption-file reasons, safe keys, per-reason skip counts,
report.json, single passes that yield nothing and impossible token budgets."""

import io
import json
import re
import shutil
import tarfile
import warnings
from pathlib import Path

import av
import numpy as np
import pytest

from ultragen.cli import main
from ultragen.data.buckets import Bucket
from ultragen.data.datamodule import VideoShardDataModule
from ultragen.data.demo import real_clip_dir
from ultragen.data.precompute import encode_shards, instantiate
from ultragen.data.shards import (
    ShardWriter,
    SkipCounter,
    VideoItem,
    build_shards,
    expand_shards,
    find_videos,
    key_problem,
    read_samples,
    truncate_caption,
)
from ultragen.codecs import VideoCodec
from ultragen.text import TextEncoder

CAR = real_clip_dir() / "carphone_pristine.mp4"  # 176x144


def rotated_clip(path: Path, rotation: int, height: int = 144, width: int = 176, frames: int = 5,
                 matrix: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """A landscape clip stored with a display matrix (as a phone writes a portrait video, rotation -90: turn it
    clockwise to show it), or with `matrix` (a, b, c, d) when given; returns its frame as stored, a bright block
    at the top left of a gradient."""
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 1] = np.linspace(0, 160, width, dtype=np.uint8)
    image[:48, :64] = 255
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.height, stream.width, stream.pix_fmt = height, width, "yuv420p"
        if matrix is None:
            stream.set_display_rotation(rotation)
        else:
            a, b, c, d = (v << 16 for v in matrix)
            stream.set_display_matrix([a, b, 0, c, d, 0, 0, 0, 1 << 30])
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with av.open(str(path)) as container:
        assert next(container.decode(video=0)).rotation % 360 == rotation % 360  # PyAV reports the rotation
    return image


def stored_frame(tmp_path: Path, buckets: list[Bucket]) -> tuple[dict, np.ndarray]:
    """Build shards of tmp_path/phone.mp4; the first clip's json and first frame as stored."""
    report = build_shards([VideoItem(tmp_path / "phone.mp4", "a phone video", "phone.mp4")], tmp_path / "out",
                          buckets, max_clips=1, progress=False)
    (sample,) = read_samples([str(report.shards[0][0])])
    with av.open(io.BytesIO(sample["mp4"])) as container:
        frame = next(container.decode(video=0))
        assert frame.rotation == 0
        return json.loads(sample["json"]), frame.to_ndarray(format="rgb24").astype(int)
BUILD = ["--frames", "5", "--size", "144x176", "--max-clips", "1"]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `ultragen ARGV`."""
    try:
        main(list(argv))
        code = 0
    except SystemExit as exn:
        code = exn.code
    out = capsys.readouterr()
    return code, out.out, out.err


# --------------------------------------------------------------------------------------------------
# 1. Arguments
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["--fps", "0"], "argument --fps: 0 must be > 0"),
        (["--fps", "-5"], "argument --fps: -5 must be > 0"),
        (["--fps", "inf"], "argument --fps: inf must be > 0"),
        (["--max-clips", "0"], "argument --max-clips: 0 must be >= 1"),
        (["--max-count", "x"], "argument --max-count: 'x' is not an integer"),
        (["--preset", "fastest"], "argument --preset: invalid choice: 'fastest'"),
        (["--crf", "60"], "argument --crf: 60 must be in [0, 51]"),
        (["--encode-threads", "-1"], "argument --encode-threads: -1 must be >= 0"),
        (["--max-caption-chars", "0"], "argument --max-caption-chars: 0 must be >= 1"),
        (["--frames", "8"], "argument --frames: frames=8 must be 4k+1, e.g. 5 or 9"),
        (["--size", "abc"], "argument --size: size 'abc' is not of the form HEIGHTxWIDTH"),
        (["--size", "100x176"], "argument --size: height=100 must be a positive multiple of 16, e.g. 96"),
        (["--prefix", "a/b"], "argument --prefix: 'a/b' must be letters, digits"),
        (["--captions", "missing.jsonl"], "argument --captions: missing.jsonl does not exist"),
    ],
)
def test_build_arguments_fail_in_one_line_before_any_video(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.setattr("ultragen.data.shards.cut_clips", pytest.fail)  # touching a video fails the test
    videos = tmp_path / "videos"
    videos.mkdir()
    code, out, err = run_cli(capsys, "data", "build", "--videos", str(videos), "--out", str(tmp_path / "out"), *args)
    assert code == 2 and not out and message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_unwritable_out_and_existing_shards_fail_before_any_video(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("ultragen.data.shards.cut_clips", pytest.fail)
    videos = tmp_path / "videos"
    videos.mkdir()
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run_cli(capsys, "data", "build", "--videos", str(videos), "--out", str(blocker / "out"))
    assert code == 2 and f"argument --out: {blocker / 'out'}: cannot write there" in err and err.count("\n") == 1
    code, _, err = run_cli(capsys, "data", "build", "--videos", str(tmp_path / "none"), "--out", str(tmp_path))
    assert code == 2 and "argument --videos" in err
    (tmp_path / "shard-000000.tar").write_bytes(b"")
    code, _, err = run_cli(capsys, "data", "build", "--videos", str(videos), "--out", str(tmp_path))
    assert code == 2 and "already holds 1 shard-*.tar shards; pass --overwrite" in err
    assert not list(tmp_path.glob(".ultragen-write-probe"))


def test_out_folder_without_write_permission_fails_before_any_video(tmp_path, capsys, monkeypatch):
    """An existing --out where no file can be created (as a read-only folder for a non-root user)."""
    monkeypatch.setattr("ultragen.data.shards.cut_clips", pytest.fail)

    def denied(self, data):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "write_bytes", denied)
    code, _, err = run_cli(capsys, "data", "build", "--videos", str(tmp_path), "--out", str(tmp_path))
    assert code == 2 and f"argument --out: {tmp_path}: cannot write there (Permission denied)" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["demo", "--scenes", "2", "--scenes-val", "2"], "argument --scenes-val: 2 must be smaller than --scenes 2"),
        (["demo", "--frames", "6"], "argument --frames: frames=6 must be 4k+1"),
        (["demo", "--scene-size", "60x64"], "argument --scene-size: height=60"),
        (["demo", "--counts", "0"], "argument --counts: 0 must be >= 1"),
        (["demo", "--fps", "0"], "argument --fps: 0 must be > 0"),
        (["encode", "--shards", "missing", "--codec", "x", "--text-encoder", "y"],
         "argument --shards: no shards found"),
    ],
)
def test_demo_and_encode_arguments_fail_in_one_line(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.setattr("ultragen.data.demo.build_demo", pytest.fail)
    monkeypatch.setattr("ultragen.data.precompute.encode_shards", pytest.fail)
    code, _, err = run_cli(capsys, "data", *argv, "--out", str(tmp_path / "out"))
    assert code == 2 and message in err and err.count("\n") == 1


def test_encode_checks_device_and_models_before_reading(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("ultragen.data.precompute.encode_shards", pytest.fail)
    (tmp_path / "a.tar").write_bytes(b"")
    base = ["data", "encode", "--shards", str(tmp_path / "a.tar"), "--out", str(tmp_path / "out")]
    code, _, err = run_cli(capsys, *base, "--codec", "ultragen.codecs.PixelCodec", "--text-encoder", "no.Such",
                           "--device", "tpu9")
    assert code == 2 and "argument --device: 'tpu9' is not a torch device" in err
    code, _, err = run_cli(capsys, *base, "--codec", "ultragen.codecs.PixelCodec", "--text-encoder", "no.Such")
    assert code == 2 and "argument --text-encoder: cannot build a TextEncoder from 'no.Such'" in err
    assert err.count("\n") == 1


def test_input_errors_during_a_run_are_one_line_unless_debug(tmp_path, capsys, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("ultragen.data.shards.build_shards", disk_full)
    videos = tmp_path / "videos"
    videos.mkdir()
    argv = ["data", "build", "--videos", str(videos), "--out", str(tmp_path / "out")]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and "error: OSError: [Errno 28] No space left on device" in err and err.count("\n") == 1
    with pytest.raises(OSError, match="No space left"):
        main([*argv, "--debug"])


# --------------------------------------------------------------------------------------------------
# 2, 5. Captions, reasons and report.json: a mixed folder
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def mixed(tmp_path) -> Path:
    """Two good clips, a phone clip stored with a -90 degree display rotation, a malformed jsonl line, a duplicate
    line, an uncaptioned clip, a listed file that does not exist, a truncated file and an over-long caption."""
    root = tmp_path / "videos"
    (root / "sub").mkdir(parents=True)
    for name in ("good.mp4", "sub/long.mp4", "uncaptioned.mp4"):
        shutil.copy(CAR, root / name)
    rotated_clip(root / "phone.mp4", -90)
    (root / "truncated.mp4").write_bytes(CAR.read_bytes()[:3000])
    lines = [
        json.dumps({"path": "good.mp4", "caption": "a man in a car"}),
        '{"path": "broken.mp4", "caption": "unterminated',
        json.dumps({"path": "sub/long.mp4", "caption": "word " * 30}),
        json.dumps({"path": "good.mp4", "caption": "again"}),
        json.dumps({"path": "gone.mp4", "caption": "not here"}),
        json.dumps({"path": "truncated.mp4", "caption": "half a file"}),
        json.dumps(["not", "an", "object"]),
        json.dumps({"path": "phone.mp4", "caption": "a portrait phone video"}),
    ]
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_mixed_folder_keeps_every_good_clip_and_explains_every_bad_input(mixed, tmp_path, capsys):
    out = tmp_path / "shards"
    code, stdout, _ = run_cli(capsys, "data", "build", "--videos", str(mixed), "--out", str(out),
                              "--max-caption-chars", "40", "--size", "176x144", *BUILD)
    assert code == 0
    jsonl = mixed / "captions.jsonl"
    assert "build: 3 clips from 3 videos in 1 shards" in stdout
    for line in [f"{jsonl}:2: captions: malformed jsonl line (", f"{jsonl}:7: captions: malformed jsonl line (",
                 f"{jsonl}:4: captions: duplicate caption (good.mp4 is already captioned on line 1)",
                 f"gone.mp4: captions: missing video (listed in {jsonl}:5, no such file)",
                 f"uncaptioned.mp4: captions: no caption (not listed in {jsonl})",
                 "truncated.mp4: decode: unreadable (", "1 captions truncated at a word boundary"]:
        assert line in stdout
    metas = {m["source"]: m for s in read_samples(expand_shards(str(out))) for m in [json.loads(s["json"])]}
    assert {name: m["caption"] for name, m in metas.items()} == {
        "good.mp4": "a man in a car", "sub/long.mp4": ("word " * 8).strip(), "phone.mp4": "a portrait phone video"
    }
    assert (metas["phone.mp4"]["height"], metas["phone.mp4"]["width"]) == (176, 144)  # upright, portrait bucket
    report = json.loads((out / "report.json").read_text())
    assert report["clips"] == 3 and report["videos"] == 3 and report["captions_truncated"] == 1
    assert report["skipped_counts"] == {"captions: malformed jsonl line": 2, "captions: duplicate caption": 1,
                                        "captions: missing video": 1, "captions: no caption": 1,
                                        "decode: unreadable": 1}
    assert {s["source"] for s in report["skipped"]} == {f"{jsonl}:2", f"{jsonl}:4", f"{jsonl}:7", "gone.mp4",
                                                        "uncaptioned.mp4", "truncated.mp4"}
    assert all(set(s) == {"source", "stage", "reason", "detail"} for s in report["skipped"])
    *table, last = stdout[stdout.index("skipped per reason:"):].splitlines()[1:]
    assert [line.split(None, 1) for line in table] == [[str(n), r] for r, n in report["skipped_counts"].items()]
    assert last == f"report: {out / 'report.json'}"


def test_missing_captions_are_listed_in_both_modes(tmp_path):
    root = tmp_path / "videos"
    root.mkdir()
    shutil.copy(CAR, root / "a.mp4")
    shutil.copy(CAR, root / "b.mov")
    (root / "a.txt").write_text("a car")
    items, skipped = find_videos(root)
    assert [i.name for i in items] == ["a.mp4"] and [(s.source, s.reason) for s in skipped] == [("b.mov", "no caption")]
    (root / "captions.jsonl").write_text(json.dumps({"path": "b.mov", "caption": "a car"}) + "\n")
    items, skipped = find_videos(root)
    assert [i.name for i in items] == ["b.mov"] and [(s.source, s.reason) for s in skipped] == [("a.mp4", "no caption")]


def test_captions_are_cut_at_a_word_boundary_and_counted(tmp_path):
    assert truncate_caption("a red ball rolls", 10) == ("a red ball", True)
    assert truncate_caption("a red ball rolls", 11) == ("a red ball", True)
    assert truncate_caption("a red ball", 10) == ("a red ball", False)
    assert truncate_caption("x" * 50, 8) == ("x" * 8, True)
    root = tmp_path / "videos"
    root.mkdir()
    shutil.copy(CAR, root / "a.mp4")
    (root / "a.txt").write_text("many words " * 800_000)  # 8.8 MB
    (item,), _ = find_videos(root)
    assert item.caption_truncated and 1990 <= len(item.caption) <= 2000
    assert ("many words " * 800_000).startswith(item.caption + " ")  # whole words only
    report = build_shards([item], tmp_path / "out", [Bucket(144, 176, 5)], max_clips=1, progress=False)
    assert report.captions_truncated == 1 and report.to_json()["captions_truncated"] == 1


# --------------------------------------------------------------------------------------------------
# 4. Keys
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["../../escape", "a/b", "a\\b", "a.b", "bell\x07", "", "k" * 201])
def test_unsafe_keys_are_never_written(tmp_path, key):
    assert key_problem(key) is not None
    with ShardWriter(tmp_path) as writer:
        with pytest.raises(ValueError, match="write: unsafe key"):
            writer.write({"__key__": key, "json": b"{}"})
        writer.write({"__key__": "ok", "json": b"{}"})
    with tarfile.open(tmp_path / "shard-000000.tar") as tar:
        assert tar.getnames() == ["ok.json"]


def raw_tar(path: Path, members: dict[str, bytes]) -> None:
    """A tar written member by member, names unchecked (as a hostile shard would be)."""
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def hostile_shard(path: Path) -> dict:
    """A shard with a good sample between samples whose keys escape the folder or hold control characters; returns
    the good sample."""
    good = next(read_samples([str(good_shard(path.parent))]))
    raw_tar(path, {"../../escape.mp4": good["mp4"], "../../escape.json": good["json"], "ok.mp4": good["mp4"],
                   "ok.json": good["json"], "tab\tkey.json": good["json"]})
    return good


def good_shard(folder: Path) -> Path:
    if not (folder / "good" / "shard-000000.tar").exists():
        build_shards([VideoItem(CAR, "a man in a car", "car.mp4")], folder / "good", [Bucket(144, 176, 5)], max_clips=1,
                     progress=False)
    return folder / "good" / "shard-000000.tar"


def test_unsafe_keys_are_skipped_and_counted_on_read(tmp_path):
    hostile_shard(tmp_path / "hostile.tar")
    skips = SkipCounter()
    assert [s["__key__"] for s in read_samples([str(tmp_path / "hostile.tar")], handler=skips)] == ["ok"]
    assert skips.reasons == {"read: unsafe key": 2}
    with pytest.raises(ValueError, match=r"hostile.tar:\.\./\.\./escape: read: unsafe key \(contains a path separator"):
        list(read_samples([str(tmp_path / "hostile.tar")]))


def test_encode_never_writes_an_unsafe_key(tmp_path):
    hostile_shard(tmp_path / "hostile.tar")
    text = instantiate("ultragen.text.NullTextEncoder", TextEncoder)
    codec = instantiate("ultragen.codecs.PixelCodec", VideoCodec)
    report = encode_shards([str(tmp_path / "hostile.tar")], tmp_path / "out", codec, text, progress=False)
    assert report.samples == 1 and report.skipped == 2
    with tarfile.open(tmp_path / "out" / "hostile.tar") as tar:
        assert sorted({n.split(".")[0] for n in tar.getnames()}) == ["ok"]


# --------------------------------------------------------------------------------------------------
# 5, 6. DataModule: named skips, passes that yield nothing, budgets
# --------------------------------------------------------------------------------------------------


def test_datamodule_skips_name_shard_key_stage_and_reason(tmp_path, caplog):
    good = next(read_samples([str(good_shard(tmp_path))]))
    mp4, meta = good["mp4"], good["json"]
    shard = tmp_path / "val" / "shard-000000.tar"
    with ShardWriter(tmp_path / "val") as writer:
        writer.write({"__key__": "good", "mp4": mp4, "json": meta})
        writer.write({"__key__": "cut", "mp4": mp4[: len(mp4) // 2], "json": meta})
        writer.write({"__key__": "badjson", "mp4": mp4, "json": b"{not json"})
    dm = VideoShardDataModule(str(tmp_path / "val"), [Bucket(144, 176, 5)], 200, val_shards=str(tmp_path / "val"),
                              num_workers=0)
    with caplog.at_level("WARNING", logger="ultragen.data.shards"):
        batches = list(dm.val_dataloader())
    assert [k for b in batches for k in b["key"]] == ["good"] and sum(int(b["skipped"]) for b in batches) == 2
    assert re.search(rf"skipped sample #\d: {re.escape(str(shard))}:badjson: parse: bad json \(", caplog.text)
    assert re.search(rf"skipped sample #\d: {re.escape(str(shard))}:cut: decode: undecodable video \(", caplog.text)


def test_a_single_pass_that_yields_nothing_raises_with_reasons(tmp_path):
    (tmp_path / "noise.tar").write_bytes(bytes(range(256)) * 40)
    dm = VideoShardDataModule(str(tmp_path), [Bucket(144, 176, 5)], 200, val_shards=str(tmp_path), num_workers=0)
    with pytest.raises(RuntimeError, match=r"yielded no batch; skipped 1 × read: unreadable shard"):
        list(dm.val_dataloader())


def test_budget_smaller_than_the_smallest_bucket_raises_at_setup():
    buckets = [Bucket(144, 176, 5), Bucket(64, 64, 5)]  # 198 and 32 tokens
    with pytest.raises(ValueError, match=r"tokens_per_batch=31 is smaller than the smallest bucket 64x64x5 \(32 tok"):
        VideoShardDataModule("unused", buckets, 31)
    assert VideoShardDataModule("unused", buckets, 32).bucket_table()[1][2] == 1


def test_lightnings_iterable_len_warning_alone_is_filtered(tmp_path):
    from lightning.pytorch.utilities.rank_zero import rank_zero_warn

    dm = VideoShardDataModule(str(good_shard(tmp_path)), [Bucket(144, 176, 5)], 200, num_workers=0)
    with warnings.catch_warnings(record=True) as caught:
        dm.train_dataloader()
        rank_zero_warn("Your `IterableDataset` has `__len__` defined. In combination with multi-process data loading")
        rank_zero_warn("Your `IterableDataset` is something else")
    assert [str(w.message) for w in caught] == ["Your `IterableDataset` is something else"]


# --------------------------------------------------------------------------------------------------
# 3. Rotation
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rotation", [-90, 90, 180])
def test_rotated_clip_is_stored_upright_in_the_matching_bucket(tmp_path, rotation):
    image = rotated_clip(tmp_path / "phone.mp4", rotation)
    shown = np.rot90(image, k=rotation // 90)  # the display matrix turns the frame counterclockwise by `rotation`
    meta, stored = stored_frame(tmp_path, [Bucket(144, 176, 5), Bucket(176, 144, 5)])
    assert (meta["height"], meta["width"]) == shown.shape[:2] and meta["source_size"] == list(shown.shape[:2])
    assert np.abs(stored - shown).mean() < 3  # upright, up to h264
    assert np.abs(stored - np.rot90(shown, 2)).mean() > 30


# display matrix (a, b, c, d), the rotation FFmpeg reports for it (mirrors are lost there), how it is shown
MIRRORS = {
    "horizontal mirror": ((-1, 0, 0, 1), 180, lambda image: image[:, ::-1]),
    "vertical mirror": ((1, 0, 0, -1), 0, lambda image: image[::-1]),
    "transpose": ((0, 1, 1, 0), -90, lambda image: image.transpose(1, 0, 2)),
}


@pytest.mark.parametrize("name", list(MIRRORS))
def test_mirrored_clip_is_stored_as_displayed(tmp_path, name):
    matrix, reported, display = MIRRORS[name]
    image = rotated_clip(tmp_path / "phone.mp4", reported, matrix=matrix)
    shown = display(image)
    meta, stored = stored_frame(tmp_path, [Bucket(144, 176, 5), Bucket(176, 144, 5)])
    assert (meta["height"], meta["width"]) == shown.shape[:2]
    assert np.abs(stored - shown).mean() < 3
    assert np.abs(stored - np.rot90(image, reported // 90)).mean() > 30  # not what the reported rotation gives


def test_display_matrix_that_is_not_a_quarter_turn_or_flip_skips_the_clip(tmp_path):
    rotated_clip(tmp_path / "phone.mp4", 0, matrix=(2, 0, 0, 2))
    report = build_shards([VideoItem(tmp_path / "phone.mp4", "a phone video", "phone.mp4")], tmp_path / "out",
                          [Bucket(144, 176, 5)], max_clips=1, progress=False)
    assert report.clips == 0 and report.counts() == {"decode: unsupported display matrix": 1}
