"""`data encode`: stored latents/text equal the codec/text encoder applied to the decoded clip; the DataModule uses them."""

import io
import json

import av
import numpy as np
import pytest
import torch
from safetensors.torch import load

from ultragen.codecs import PixelCodec, VideoCodec
from ultragen.data.buckets import Bucket
from ultragen.data.datamodule import VideoShardDataModule
from ultragen.data.demo import REAL_CLIPS, real_clip_dir
from ultragen.data.precompute import encode_shards, instantiate
from ultragen.data.shards import ShardWriter, VideoItem, build_shards, expand_shards, read_samples
from ultragen.data.video import encode_h264
from ultragen.text import NullTextEncoder, TextEncoder

CODEC = '{"class_path": "ultragen.codecs.PixelCodec", "init_args": {"temporal_factor": 4, "spatial_factor": 8}}'


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("video")
    items = [VideoItem(real_clip_dir() / name, REAL_CLIPS[name], name) for name in ("bikes.mp4", "carphone_pristine.mp4")]
    build_shards(items, out, [Bucket(112, 256, 9), Bucket(144, 176, 9)], fps=8.0, max_clips=2, max_count=2, progress=False)
    return out


@pytest.fixture(scope="module")
def text_encoder():
    return instantiate({"class_path": "ultragen.text.MiniLMEncoder", "init_args": {"max_length": 8}}, TextEncoder)


def decoded_clip(mp4: bytes) -> torch.Tensor:
    """(1, 3, F, H, W) in [-1, 1], decoded frame by frame with PyAV."""
    with av.open(io.BytesIO(mp4)) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    return torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1


def test_latents_equal_codec_of_decoded_clip(shards, text_encoder, tmp_path):
    codec = instantiate(CODEC, VideoCodec)
    report = encode_shards(expand_shards(str(shards)), tmp_path, codec, text_encoder, dtype="float32", progress=False)
    assert report.samples == 4 and report.skipped == 0 and [p.name for p in report.shards] == ["shard-000000.tar", "shard-000001.tar"]
    source = {s["__key__"]: s for s in read_samples(expand_shards(str(shards)))}
    for sample in read_samples(expand_shards(str(tmp_path))):
        assert set(sample) == {"__key__", "__url__", "json", "latents.safetensors", "text.safetensors"}
        latents = load(sample["latents.safetensors"])["latents"]
        text = load(sample["text.safetensors"])["text"]
        meta = json.loads(sample["json"])
        src = source[sample["__key__"]]
        torch.testing.assert_close(latents, PixelCodec(4, 8).encode(decoded_clip(src["mp4"]))[0], rtol=0, atol=0)
        torch.testing.assert_close(text, text_encoder([json.loads(src["json"])["caption"]])[0])
        assert meta["latent_shape"] == list(latents.shape) and meta["codec"] == "ultragen.codecs.pixel.PixelCodec"
        assert meta["caption"] == json.loads(src["json"])["caption"]


def test_bf16_default_resume_and_datamodule_uses_precomputed(shards, text_encoder, tmp_path):
    codec = PixelCodec(4, 8)
    urls = expand_shards(str(shards))
    encode_shards(urls, tmp_path, codec, text_encoder, progress=False)
    first = next(read_samples(expand_shards(str(tmp_path))))
    assert load(first["latents.safetensors"])["latents"].dtype == torch.bfloat16
    stamp = (tmp_path / "shard-000000.tar").stat().st_mtime_ns
    report = encode_shards(urls, tmp_path, codec, text_encoder, progress=False)  # resumable: existing shards kept
    assert report.samples == 0 and (tmp_path / "shard-000000.tar").stat().st_mtime_ns == stamp

    dm = VideoShardDataModule(str(tmp_path), [Bucket(112, 256, 9)], tokens_per_batch=2 * 3 * 7 * 16, batches_per_epoch=3,
                              num_workers=0)
    for raw in dm.train_dataloader():
        assert "video" not in raw and set(raw) == {"latents", "text", "caption", "key", "skipped"}
        batch = dm.on_after_batch_transfer(raw, 0)
        b, c, t, h, w = batch["latents"].shape
        assert (c, t) == (codec.latent_channels, 3) and (h, w) in {(14, 32), (18, 22)}
        assert batch["latents"].dtype == batch["text"].dtype == torch.float32 and batch["text"].shape == (b, 8, 384)
        assert b == max(1, (2 * 3 * 7 * 16) // (t * h // 2 * w // 2))


def test_instantiate_forms_and_errors(text_encoder, tmp_path):
    assert isinstance(instantiate("ultragen.codecs.PixelCodec", VideoCodec), PixelCodec)
    spec = tmp_path / "codec.yaml"
    spec.write_text("class_path: ultragen.codecs.PixelCodec\ninit_args:\n  spatial_factor: 4\n")
    assert instantiate(str(spec), VideoCodec).spatial_factor == 4
    with pytest.raises(ValueError, match="cannot build a VideoCodec"):
        instantiate('{"class_path": "ultragen.text.MiniLMEncoder"}', VideoCodec)
    with pytest.raises(ValueError, match="dtype='int8'"):
        encode_shards([], tmp_path, PixelCodec(), text_encoder, dtype="int8")


def test_wan_vae_by_class_path_needs_no_code_change(tmp_path):
    from ultragen.codecs.wan_vae import DEBUG_CONFIG

    torch.manual_seed(0)
    spec = {"class_path": "ultragen.codecs.wan_vae.WanVAE", "init_args": {"config": DEBUG_CONFIG, "tiling": False}}
    codec = instantiate(spec, VideoCodec)
    y, x = np.mgrid[0:64, 0:64]
    video = np.stack([np.stack([(x * 4 + 9 * f) % 256, y * 4, np.full_like(x, 90)], -1) for f in range(5)]).astype(np.uint8)
    with ShardWriter(tmp_path / "in") as writer:
        meta = {"caption": "a ramp", "fps": 8, "height": 64, "width": 64, "frames": 5}
        writer.write({"__key__": "ramp", "mp4": encode_h264(video, fps=8), "json": json.dumps(meta).encode()})
    encode_shards(expand_shards(str(tmp_path / "in")), tmp_path / "out", codec, NullTextEncoder(), dtype="float32",
                  progress=False)
    stored = load(next(read_samples(expand_shards(str(tmp_path / "out"))))["latents.safetensors"])["latents"]
    src = next(read_samples(expand_shards(str(tmp_path / "in"))))["mp4"]
    torch.testing.assert_close(stored, codec.encode(decoded_clip(src))[0])
    assert stored.shape == (codec.latent_channels, 2, 8, 8)
