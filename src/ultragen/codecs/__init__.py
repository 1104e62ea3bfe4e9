"""Video codecs: pixels <-> latent grids. All share the VideoCodec interface."""

from ultragen.codecs.base import VideoCodec
from ultragen.codecs.pixel import PixelCodec

__all__ = ["PixelCodec", "VideoCodec"]
