"""Video codecs: pixels <-> latent grids. All share the VideoCodec interface."""

from ultragen.codecs.base import VideoCodec
from ultragen.codecs.pixel import PixelCodec
from ultragen.codecs.wan_vae import WanVAE

__all__ = ["PixelCodec", "VideoCodec", "WanVAE"]
