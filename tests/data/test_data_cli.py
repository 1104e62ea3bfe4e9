"""`ultragen data build|demo|encode` through the real console entry point, and configs/data/*.yaml on demo shards."""

import json
import shutil
from pathlib import Path

import lightning as L
import pytest
import yaml
from jsonargparse import ArgumentParser

from ultragen.cli import main
from ultragen.data.demo import REAL_CLIPS, real_clip_dir
from ultragen.data.procedural import Truth, random_scene
from ultragen.data.shards import expand_shards, read_samples, sample_meta

ROOT = Path(__file__).resolve().parents[2]


def data_module(config: str, **overrides) -> L.LightningDataModule:
    """Instantiate the `data:` section of a config file, as LightningCLI does, with init_args overrides."""
    spec = yaml.safe_load((ROOT / config).read_text())["data"]
    spec["init_args"] |= overrides
    parser = ArgumentParser()
    parser.add_subclass_arguments(L.LightningDataModule, "data")
    return parser.instantiate(parser.parse_object({"data": spec})).data


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    main(["data", "demo", "--out", str(out), "--frames", "5", "--scene-size", "64x112", "--scenes", "3", "--scenes-val",
          "1", "--real-size", "64x128", "--real-size", "96x112", "--counts", "1", "2"])
    return out


def test_demo_writes_real_and_procedural_shards_with_ground_truth(demo, capsys):
    train = [sample_meta(s) for s in read_samples(expand_shards(str(demo / "train")))]
    val = [sample_meta(s) for s in read_samples(expand_shards(str(demo / "val")))]
    sources = {m["source"] for m in train}
    assert set(REAL_CLIPS) <= sources and {"scene-0000.mp4", "scene-0001.mp4"} <= sources
    assert [m["source"] for m in val] == ["scene-0002.mp4"]
    assert {(m["height"], m["width"], m["frames"]) for m in train} == {(64, 128, 5), (96, 112, 5), (64, 112, 5)}
    assert all(m["caption"] == REAL_CLIPS[m["source"]] and "truth" not in m for m in train if m["source"] in REAL_CLIPS)
    for meta in [m for m in train + val if m["source"].startswith("scene-")]:
        scene = random_scene(int(meta["source"][6:10]), seed=0, counts=(1, 2))
        assert meta["caption"] == scene.caption()
        assert Truth.from_json(meta["truth"]) == scene.truth(5, 64, 112)


def test_demo_config_streams_the_demo_shards(demo):
    buckets = [{"height": 64, "width": 128, "frames": 5}, {"height": 96, "width": 112, "frames": 5},
               {"height": 64, "width": 112, "frames": 5}]
    dm = data_module("configs/data/demo.yaml", train_shards=str(demo / "train"), val_shards=str(demo / "val"),
                     buckets=buckets, tokens_per_batch=224, batches_per_epoch=3)  # 224 tokens: one 64x112x5 clip
    batches = list(dm.train_dataloader())
    assert len(batches) == 3 and all(b["video"].shape[1:3] == (3, 5) for b in batches)
    val_key = next(read_samples(expand_shards(str(demo / "val"))))["__key__"]
    assert [k for b in dm.val_dataloader() for k in b["key"]] == [val_key] * dm.val_batches
    shards = data_module("configs/data/shards.yaml")
    assert [n for _, _, n in shards.bucket_table()] == [1, 1, 1]


def test_build_and_encode_commands(tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(real_clip_dir() / "carphone_pristine.mp4", videos / "car.mp4")
    (videos / "captions.jsonl").write_text(json.dumps({"path": "car.mp4", "caption": "a man in a car"}) + "\n")
    (videos / "notes.mp4").write_bytes(b"not a video")
    main(["data", "build", "--videos", str(videos), "--out", str(tmp_path / "shards"), "--frames", "9", "--size", "144x176",
          "--max-clips", "2"])
    out = capsys.readouterr().out
    assert "build: 2 clips from 1 videos in 1 shards" in out
    main(["data", "encode", "--shards", str(tmp_path / "shards"), "--out", str(tmp_path / "latents"),
          "--codec", "ultragen.codecs.PixelCodec", "--text-encoder", '{"class_path": "ultragen.text.NullTextEncoder"}'])
    assert "encode: 2 samples into 1 shards" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "build", "--videos", str(videos), "--out", str(tmp_path / "x"), "--frames", "8", "--size", "144x176"])
    assert exit_info.value.code == 2 and r"--frames: frames=8 must be 4k+1" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="no clips written"):
        main(["data", "build", "--videos", str(videos), "--out", str(tmp_path / "y"), "--frames", "401", "--size", "144x176"])
