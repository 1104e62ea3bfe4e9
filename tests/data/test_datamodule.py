"""VideoShardDataModule on real shards: batch contract, skipped samples, rank/worker splitting, buckets, Lightning."""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from ultragen.cli import main
from ultragen.data.buckets import Bucket, TokenBudget
from ultragen.data.datamodule import VideoShardDataModule, assign_shards, worker_share
from ultragen.data.demo import REAL_CLIPS, real_clip_dir
from ultragen.data.shards import ShardWriter, VideoItem, build_shards, expand_shards, read_samples
from ultragen.data.video import decode_frames

ROOT = Path(__file__).resolve().parents[2]
BUCKETS = [Bucket(112, 256, 9), Bucket(128, 224, 9), Bucket(144, 176, 9)]
ONE_CLIP = 336  # tokens of the largest bucket: batches of one clip


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """Real clips (bikes 112x256, bigbuckbunny 128x224, carphone 144x176; 9 frames at 8 fps), one clip per shard."""
    out = tmp_path_factory.mktemp("shards")
    items = [VideoItem(real_clip_dir() / name, caption, name) for name, caption in sorted(REAL_CLIPS.items())]
    build_shards(items, out, BUCKETS, fps=8.0, max_clips=3, max_count=1, progress=False)
    return out


def key_to_shard(shards: Path) -> dict[str, str]:
    return {s["__key__"]: s["__url__"] for s in read_samples(expand_shards(str(shards)))}


def shard_module(shards, **kwargs) -> VideoShardDataModule:
    args = dict(train_shards=str(shards), buckets=BUCKETS, tokens_per_batch=700, num_workers=0) | kwargs
    return VideoShardDataModule(**args)


def test_real_round_trip_batch_contract(shards):
    dm = shard_module(shards, val_shards=str(shards), batches_per_epoch=4, num_workers=2)
    batches = list(dm.train_dataloader())
    assert len(batches) == 4
    for raw in batches:
        assert set(raw) == {"video", "caption", "key", "skipped"}
        b, c, f, h, w = raw["video"].shape
        assert raw["video"].dtype == torch.uint8 and c == 3 and f == 9 and Bucket(h, w, 9) in BUCKETS
        assert len(raw["caption"]) == len(raw["key"]) == b and all(isinstance(x, str) and x for x in raw["caption"])
        batch = dm.on_after_batch_transfer(dm.on_before_batch_transfer(raw, 0), 0)
        video = batch["video"]
        assert video.dtype == torch.float32 and video.is_contiguous() and video.shape == (b, 3, 9, h, w)
        assert -1 <= video.min() < -0.5 and 0.5 < video.max() <= 1  # real content spans the range
    # validation: centre crop, all frames -> exactly the decoded stored clip
    mp4 = {s["__key__"]: s["mp4"] for s in read_samples(expand_shards(str(shards)))}
    seen = 0
    for batch in dm.val_dataloader():
        for i, key in enumerate(batch["key"]):
            _, _, f, h, w = batch["video"].shape
            want = decode_frames(mp4[key], range(f), np.zeros((f, h, w, 3), np.uint8))
            np.testing.assert_array_equal(batch["video"][i].permute(1, 2, 3, 0).numpy(), want)
            seen += 1
    assert seen == len(mp4) == 9


def test_corrupt_truncated_and_pickled_samples_are_skipped_never_unpickled(shards, tmp_path):
    marker = tmp_path / "unpickled"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    good = [s for s in read_samples(expand_shards(str(shards))) if s["__key__"].startswith("bikes")]
    bad = tmp_path / "bad"
    with ShardWriter(bad, max_count=10) as writer:
        writer.write({"__key__": good[0]["__key__"], "mp4": good[0]["mp4"], "json": good[0]["json"]})
        writer.write({"__key__": "truncated", "mp4": good[1]["mp4"][: len(good[1]["mp4"]) // 2], "json": good[1]["json"]})
        writer.write({"__key__": "evil", "mp4": good[2]["mp4"], "json": good[2]["json"], "pyd": pickle.dumps(Exploit())})
        writer.write({"__key__": "badjson", "mp4": good[2]["mp4"], "json": b"{not json"})
    dm = shard_module(shards, val_shards=str(bad), tokens_per_batch=ONE_CLIP)
    batches = list(dm.val_dataloader())
    assert [k for b in batches for k in b["key"]] == [good[0]["__key__"]]
    assert sum(int(dm.on_before_batch_transfer(b, 0)["skipped"]) for b in batches) == 3 == dm.skipped
    assert not marker.exists()


def test_truncated_shard_file_is_skipped(shards, tmp_path):
    urls = expand_shards(str(shards))
    (tmp_path / "a.tar").write_bytes(Path(urls[0]).read_bytes())
    data = Path(urls[1]).read_bytes()
    (tmp_path / "b.tar").write_bytes(data[: len(data) // 2])
    batches = list(shard_module(shards, val_shards=str(tmp_path), tokens_per_batch=ONE_CLIP).val_dataloader())
    assert len(batches) == 1 and sum(int(b["skipped"]) for b in batches) == 1


def test_two_ranks_two_workers_get_disjoint_shards_and_equal_batches(shards, monkeypatch):
    urls = expand_shards(str(shards))
    parts = [assign_shards(urls, r, 2, w, 2) for r in range(2) for w in range(2)]
    assert sorted(u for p in parts for u in p) == sorted(urls)
    assert sum(map(len, parts)) == len(urls)
    assert [worker_share(5, w, 2) for w in range(2)] == [3, 2]
    owner = key_to_shard(shards)
    seen = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        loader = shard_module(shards, tokens_per_batch=ONE_CLIP, batches_per_epoch=5, num_workers=2).train_dataloader()
        batches = list(loader)
        assert len(batches) == len(loader) == 5
        seen[rank] = {owner[k] for b in batches for k in b["key"]}
        assert seen[rank] <= set(urls[rank::2])
    assert not seen[0] & seen[1]


def test_every_batch_is_one_bucket_within_budget(shards):
    budget = TokenBudget(700)
    dm = shard_module(shards, tokens_per_batch=700, batches_per_epoch=6)
    sources = {s["__key__"]: json.loads(s["json"])["source"] for s in read_samples(expand_shards(str(shards)))}
    for batch in dm.train_dataloader():
        b, _, f, h, w = batch["video"].shape
        tokens = budget.tokens(Bucket(h, w, f))
        assert len({sources[k] for k in batch["key"]}) == 1  # one source aspect -> one bucket
        assert b == budget.batch_size(tokens) and b * tokens <= 700


def test_fps_sampling_and_explicit_resize(shards):
    dm = shard_module(shards, buckets=[Bucket(64, 128, 5)], tokens_per_batch=64, fps=4.0, resize=True, batches_per_epoch=2)
    for batch in dm.train_dataloader():
        assert batch["video"].shape == (1, 3, 5, 64, 128)
    strict = shard_module(shards, val_shards=str(shards), buckets=[Bucket(256, 256, 9)], tokens_per_batch=768)
    with pytest.raises(RuntimeError, match=r"yielded no batch; skipped 9 × plan: no bucket fits"):
        list(strict.val_dataloader())  # no bucket fits without resize: every sample skipped, and said so


@pytest.mark.parametrize(
    "kwargs, match",
    [({"buckets": []}, "buckets is empty"), ({"crop": "left"}, "crop='left'"), ({"fps": 8.0, "frame_stride": 2}, "use one of them"),
     ({"buckets": [Bucket(100, 128, 9)]}, "height=100"), ({"val_batches": 0}, "val_batches=0")],
)
def test_bad_settings_raise(shards, kwargs, match):
    with pytest.raises(ValueError, match=match):
        shard_module(shards, **kwargs)


def test_more_ranks_than_shards_and_missing_shards_raise(shards, monkeypatch, tmp_path):
    with pytest.raises(FileNotFoundError, match="ultragen data demo"):
        shard_module(tmp_path / "none").train_dataloader()
    monkeypatch.setenv("WORLD_SIZE", "64")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match="9 shards cannot be split over 64 ranks"):
        shard_module(shards).train_dataloader()


def test_predict_prompts():
    dm = VideoShardDataModule("unused", BUCKETS, 700, prompts=["a red ball", "a blue cube"], seed=3, predict_batch_size=2)
    batch = next(iter(dm.predict_dataloader()))
    assert batch["prompt"] == ["a red ball", "a blue cube"] and batch["seed"].tolist() == [3, 4]
    with pytest.raises(ValueError, match="prompts"):
        VideoShardDataModule("unused", BUCKETS, 700).predict_dataloader()


def test_fit_on_shards_logs_skipped(shards, tmp_path, monkeypatch):
    """The real CLI trains the tiny DiT on the shards; the skipped count reaches TensorBoard."""
    good = next(s for s in read_samples(expand_shards(str(shards))) if s["__key__"].startswith("bikes"))
    train = tmp_path / "train"
    with ShardWriter(train, max_count=1) as writer:
        writer.write({"__key__": "ok", "mp4": good["mp4"], "json": good["json"]})
        writer.write({"__key__": "bad", "mp4": good["mp4"][:500], "json": good["json"]})
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr("sys.argv", ["ultragen"])
    data = {
        "class_path": "ultragen.data.datamodule.VideoShardDataModule",
        "init_args": {"train_shards": str(train), "buckets": [{"height": 112, "width": 256, "frames": 9}],
                      "tokens_per_batch": 1344, "spatial_factor": 4, "batches_per_epoch": 3, "num_workers": 0},
    }
    main(["fit", "-c", "configs/debug/tiny.yaml", f"--data={json.dumps(data)}", "--trainer.max_steps=3",
          "--trainer.limit_val_batches=0", "--trainer.log_every_n_steps=1", "--trainer.callbacks=[]",
          f"--trainer.logger.init_args.save_dir={tmp_path}"])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next(tmp_path.rglob("events.out.tfevents.*")))).Reload()
    assert "data/skipped" in events.Tags()["scalars"]
    assert sum(e.value for e in events.Scalars("data/skipped")) >= 1


def test_ground_truth_in_the_shard_json_reaches_the_batch(shards, tmp_path):
    from ultragen.data.demo import write_procedural
    from ultragen.data.procedural import Truth, random_scene

    items = write_procedural(tmp_path / "scenes", 2, 48, 64, 9, 8.0, seed=3)
    build_shards(items, tmp_path / "shards", [Bucket(48, 64, 9)], fps=8.0, max_count=2, progress=False)
    dm = shard_module(tmp_path / "shards", test_shards=str(tmp_path / "shards"), buckets=[Bucket(48, 64, 9)])
    batch = next(iter(dm.test_dataloader()))
    truths = {key: Truth.from_json(t) for key, t in zip(batch["key"], batch["truth"])}
    want = {item.name: random_scene(i, 3).truth(9, 48, 64) for i, item in enumerate(items)}
    assert len(truths) == 2 and sorted(truths.values(), key=str) == sorted(want.values(), key=str)
    real = next(iter(shard_module(shards, test_shards=str(shards)).test_dataloader()))
    assert "truth" not in real  # clips without ground truth add no key


@pytest.mark.parametrize("workers", [0, 2])
def test_resumed_epoch_continues_with_the_uninterrupted_batches(shards, tmp_path, workers):
    """A train loader restored from the state saved after k batches yields batches k+1.. of the uninterrupted epoch
    (keys, crops, skip counts), also after a batch whose only clip failed to decode; the next epoch differs."""
    good = next(s for s in read_samples(expand_shards(str(shards))) if s["__key__"].startswith("bikes"))
    with ShardWriter(tmp_path, max_count=10) as writer:
        writer.write({"__key__": "truncated", "mp4": good["mp4"][: len(good["mp4"]) // 2], "json": good["json"]})
        writer.write({"__key__": "badjson", "mp4": good["mp4"], "json": b"{not json"})

    def loader():
        return shard_module(shards, train_shards=[str(shards), str(tmp_path)], tokens_per_batch=ONE_CLIP,
                            batches_per_epoch=9, num_workers=workers).train_dataloader()

    def content(batches):
        return [(b["key"], int(b["skipped"]), b["video"]) for b in batches]

    full = loader()
    epoch = content(full)
    assert sum(s for _, s, _ in epoch) > 0  # skips happened inside the epoch
    undecoded = False
    for k in range(1, 9):
        first = loader()
        batches = iter(first)
        for _ in range(k):
            next(batches)
        state = first.state_dict()
        assert state["epoch"] == 0 and state["batches"] == k
        undecoded |= sum(state["consumed"].values()) > k  # a plan used without giving a batch
        resumed = loader()
        resumed.load_state_dict(state)
        tail = content(resumed)
        assert [(key, s) for key, s, _ in tail] == [(key, s) for key, s, _ in epoch[k:]]
        assert all(torch.equal(a, b) for (_, _, a), (_, _, b) in zip(tail, epoch[k:]))  # same crops
    assert undecoded
    after = loader()
    after.load_state_dict(full.state_dict())  # saved after the last batch: the next pass is epoch 1
    assert [key for key, _, _ in content(after)] != [key for key, _, _ in epoch]
    assert after.state_dict()["epoch"] == 1
