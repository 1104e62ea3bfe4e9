import pytest
import torch

from ultragen.codecs import PixelCodec


@pytest.mark.parametrize("tf,sf,frames", [(4, 8, 9), (4, 4, 5), (1, 2, 3)])
def test_pixel_codec_is_an_exact_inverse_with_causal_layout(tf, sf, frames):
    codec = PixelCodec(temporal_factor=tf, spatial_factor=sf)
    video = torch.rand(2, 3, frames, 16, 32) * 2 - 1
    latents = codec.encode(video)
    assert latents.shape == (2, *codec.latent_shape(frames, 16, 32))
    assert latents.shape[2] == (frames - 1) // tf + 1
    torch.testing.assert_close(codec.decode(latents), video)
    assert codec.video_shape(*latents.shape[2:]) == (frames, 16, 32)


def test_pixel_codec_names_bad_sizes():
    codec = PixelCodec()
    with pytest.raises(ValueError, match=r"frames=10 must be 4k\+1 \(e.g. 9 or 13\)"):
        codec.latent_shape(10, 64, 64)
    with pytest.raises(ValueError, match="height=60 must be a multiple of 8"):
        codec.latent_shape(9, 60, 64)
