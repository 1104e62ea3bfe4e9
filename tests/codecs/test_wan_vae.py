"""WanVAE on a tiny random-weight diffusers AutoencoderKLWan: layout, normalisation, tiling, loading."""

import json

import pytest
import torch
from safetensors.torch import save_file

from ultragen.codecs.wan_vae import DEBUG_CONFIG, WAN22_DEBUG_CONFIG, WanVAE


@pytest.fixture(scope="module")
def codec():
    torch.manual_seed(0)
    return WanVAE(config=DEBUG_CONFIG, tiling=False)


def test_layout_follows_4x8x8(codec):
    video = torch.rand(1, 3, 9, 32, 48) * 2 - 1
    lat = codec.encode(video)
    assert lat.shape == (1, 4, 3, 4, 6) == (1, *codec.latent_shape(9, 32, 48))
    assert lat.dtype == torch.float32
    out = codec.decode(lat)
    assert out.shape == video.shape and out.dtype == torch.float32
    assert out.abs().max() <= 1
    with pytest.raises(ValueError, match="frames=8 must be 4k\\+1"):
        codec.encode(torch.zeros(1, 3, 8, 32, 48))
    with pytest.raises(ValueError, match="width=44 must be a multiple of 8"):
        codec.encode(torch.zeros(1, 3, 9, 32, 44))


def test_normalisation_round_trip(codec):
    video = torch.rand(2, 3, 5, 16, 16) * 2 - 1
    raw = codec.vae.encode(video).latent_dist.mode()
    mean = torch.tensor(DEBUG_CONFIG["latents_mean"]).view(1, -1, 1, 1, 1)
    std = torch.tensor(DEBUG_CONFIG["latents_std"]).view(1, -1, 1, 1, 1)
    lat = codec.encode(video)
    torch.testing.assert_close(lat, (raw - mean) / std)
    torch.testing.assert_close(codec.denormalize(codec.normalize(raw)), raw)
    torch.testing.assert_close(codec.decode(lat), codec.vae.decode(raw).sample, atol=1e-5, rtol=1e-5)


def test_frozen_and_stays_eval(codec):
    assert not any(p.requires_grad for p in codec.parameters())
    codec.train()
    assert not codec.vae.training
    assert "tiling=False" in repr(codec)


def test_tiled_decode_matches_untiled_outside_seams():
    """Decoder calls are as counted, and tiled == untiled wherever a pixel is decoded far from any tile edge.

    The random decoder's one global operation (spatial self-attention in its mid block) is switched off, so
    the check isolates tiling: inside the overlap band (plus the decoder's receptive field) the tiles blend.
    """
    torch.manual_seed(1)
    tiled = WanVAE(config=DEBUG_CONFIG, tiling=True, tile_size=(32, 192), tile_stride=(32, 128), progress=True)
    for block in tiled.vae.decoder.mid_block.attentions:
        torch.nn.init.zeros_(block.proj.weight)
        torch.nn.init.zeros_(block.proj.bias)
    latents = torch.randn(1, 4, 2, 4, 32)  # 32×256 pixels: two tiles side by side, overlap 128..192 px
    expected_calls = tiled.decode_calls(latents.shape)
    calls = []
    hook = tiled.vae.decoder.register_forward_hook(lambda *_: calls.append(1))
    out = tiled.decode(latents)
    tiled.tiling = False
    tiled.vae.disable_tiling()
    ref = tiled.decode(latents)
    hook.remove()
    assert expected_calls == 2 * 2 and len(calls) == expected_calls + 2  # 2 frames × 2 tiles, then 2 untiled
    err = (out - ref).abs().amax(dim=(0, 1, 2, 3))  # per pixel column
    assert err[:64].max() < 1e-4 and err[-32:].max() < 1e-4
    assert err[128:192].max() > 1e-3  # the blend band really differs: tiling was used
    assert (out - ref).abs().mean() < 0.1 * ref.std()


def test_loads_local_dir_repo_layout_and_single_file(codec, tmp_path):
    video = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    expected = codec.encode(video)
    codec.vae.save_pretrained(tmp_path / "repo" / "vae")
    save_file(codec.vae.state_dict(), tmp_path / "vae.safetensors")
    torch.save(codec.vae.state_dict(), tmp_path / "vae.pth")
    for kwargs in (
        dict(path=str(tmp_path / "repo" / "vae")),
        dict(path=str(tmp_path / "repo")),
        dict(path=str(tmp_path / "vae.safetensors"), config=DEBUG_CONFIG),
        dict(path=str(tmp_path / "vae.pth"), config=DEBUG_CONFIG),
    ):
        torch.testing.assert_close(WanVAE(tiling=False, **kwargs).encode(video), expected)
    with pytest.raises(ValueError, match=r"(?s)SHAPE MISMATCH.*refusing a partial load"):
        WanVAE(path=str(tmp_path / "vae.safetensors"), config={**DEBUG_CONFIG, "base_dim": 16})
    with pytest.raises(ValueError, match="needs `path`"):
        WanVAE()


def test_compression_factors_come_from_the_config_and_a_null_one_raises(codec, tmp_path):
    """Keys absent from config.json take diffusers' defaults (4, 8); a null is named, never replaced by a guess."""
    codec.vae.save_pretrained(tmp_path / "vae")
    config_file = tmp_path / "vae" / "config.json"
    stored = json.loads(config_file.read_text())
    absent = {k: v for k, v in stored.items() if k not in ("scale_factor_temporal", "scale_factor_spatial")}
    config_file.write_text(json.dumps(absent))
    loaded = WanVAE(path=str(tmp_path / "vae"), tiling=False)
    assert (loaded.temporal_factor, loaded.spatial_factor) == (4, 8)
    config_file.write_text(json.dumps(stored | {"scale_factor_spatial": None}))
    with pytest.raises(ValueError, match=r"config.json under .*vae sets scale_factor_spatial=None; set it to"):
        WanVAE(path=str(tmp_path / "vae"), tiling=False)
    with pytest.raises(ValueError, match=r"WanVAE `config` sets scale_factor_temporal=None; set it to"):
        WanVAE(config=DEBUG_CONFIG | {"scale_factor_temporal": None}, tiling=False)


def test_bfloat16_option(codec):
    bf16 = WanVAE(config=DEBUG_CONFIG, dtype="bfloat16", tiling=False)
    bf16.vae.load_state_dict(codec.vae.state_dict())
    latents = torch.randn(1, 4, 2, 2, 2)
    out = bf16.decode(latents)
    assert out.dtype == torch.float32 and next(bf16.vae.parameters()).dtype == torch.bfloat16
    torch.testing.assert_close(out, codec.decode(latents), atol=0.1, rtol=0)
    with pytest.raises(ValueError, match="tile_size"):
        WanVAE(config=DEBUG_CONFIG, tile_size=(30, 52))


def test_wan22_layout_follows_4x16x16_and_loads_from_its_diffusers_folder(tmp_path):
    torch.manual_seed(0)
    codec = WanVAE(config=WAN22_DEBUG_CONFIG, tiling=False)
    assert (codec.temporal_factor, codec.spatial_factor) == (4, 16)
    assert codec.latent_shape(81, 2176, 3840)[1:] == (21, 136, 240)  # 21x68x120 tokens with the 1x2x2 patch
    video = torch.rand(1, 3, 9, 64, 96) * 2 - 1
    latents = codec.encode(video)
    assert latents.shape == (1, 4, 3, 4, 6) == (1, *codec.latent_shape(9, 64, 96))
    assert codec.decode(latents).shape == video.shape
    codec.vae.save_pretrained(tmp_path / "vae")  # config.json carries is_residual, patch_size, scale factors
    torch.testing.assert_close(WanVAE(path=str(tmp_path / "vae"), tiling=False).encode(video), latents)
    torch.save({"encoder.conv1.weight": torch.zeros(1)}, tmp_path / "Wan2.2_VAE.pth")
    with pytest.raises(ValueError, match="original Wan layout.*point `path` at the vae/ folder"):
        WanVAE(path=str(tmp_path / "Wan2.2_VAE.pth"), config=WAN22_DEBUG_CONFIG)


def test_wan22_tiled_decode_approximates_untiled_on_a_clip_of_two_tiles():
    """As for Wan2.1, with the 16x decoder's wider reach: exact far left, blended in the overlap, close overall."""
    torch.manual_seed(1)
    tiled = WanVAE(config=WAN22_DEBUG_CONFIG, tiling=True, tile_size=(32, 192), tile_stride=(32, 128))
    for block in tiled.vae.decoder.mid_block.attentions:  # the one global operation, off (see the Wan2.1 test)
        torch.nn.init.zeros_(block.proj.weight)
        torch.nn.init.zeros_(block.proj.bias)
    latents = torch.randn(1, 4, 2, 2, 16)  # 32x256 pixels: two tiles side by side, overlap 128..192 px
    out = tiled.decode(latents)
    tiled.tiling = False
    tiled.vae.disable_tiling()
    ref = tiled.decode(latents)
    assert out.shape == ref.shape == (1, 3, 5, 32, 256)
    err = (out - ref).abs().amax(dim=(0, 1, 2, 3))  # per pixel column
    assert err[:32].max() < 1e-3 and err[128:192].max() > 1e-2  # the blend band really differs: tiling was used
    assert (out - ref).abs().mean() < 0.1 * ref.std()
