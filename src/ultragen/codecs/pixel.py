"""PixelCodec: parameter-free space-to-depth with the Wan-VAE's causal T×H×W layout (exact inverse)."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor

from ultragen.codecs.base import VideoCodec


class PixelCodec(VideoCodec):
    """Folds tf×sf×sf pixel blocks into channels; the first frame is repeated tf times (causal layout).

    Latent channels = 3·tf·sf², scaled by `scale` so latents have roughly unit variance.
    """

    def __init__(self, temporal_factor: int = 4, spatial_factor: int = 8, scale: float = 2.0):
        super().__init__()
        self.temporal_factor = temporal_factor
        self.spatial_factor = spatial_factor
        self.latent_channels = 3 * temporal_factor * spatial_factor**2
        self.scale = scale

    def encode(self, video: Tensor) -> Tensor:
        self.latent_shape(*video.shape[2:])
        first = video[:, :, :1].expand(-1, -1, self.temporal_factor - 1, -1, -1)
        video = torch.cat([first, video], dim=2)  # (B, 3, tf·(k+1), H, W)
        tf, sf = self.temporal_factor, self.spatial_factor
        lat = rearrange(video, "b c (t x) (h y) (w z) -> b (c x y z) t h w", x=tf, y=sf, z=sf)
        return lat * self.scale

    def decode(self, latents: Tensor) -> Tensor:
        tf, sf = self.temporal_factor, self.spatial_factor
        if latents.shape[1] != self.latent_channels:
            raise ValueError(f"latents have {latents.shape[1]} channels, PixelCodec expects {self.latent_channels}")
        video = rearrange(latents / self.scale, "b (c x y z) t h w -> b c (t x) (h y) (w z)", x=tf, y=sf, z=sf)
        first = video[:, :, :tf].mean(dim=2, keepdim=True)  # the tf copies of frame 0
        return torch.cat([first, video[:, :, tf:]], dim=2).clamp(-1, 1)

    def extra_repr(self) -> str:
        return f"temporal_factor={self.temporal_factor}, spatial_factor={self.spatial_factor}, channels={self.latent_channels}"
