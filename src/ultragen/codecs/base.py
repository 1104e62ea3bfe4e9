"""VideoCodec: the interface every codec (PixelCodec, WanVAE) implements."""

from __future__ import annotations

from torch import Tensor, nn


class VideoCodec(nn.Module):
    """Maps videos (B, 3, F, H, W) in [-1, 1] to latents (B, C, T, h, w) and back.

    Causal layout as the Wan-VAE: F = temporal_factor·k + 1 frames -> k + 1 latent frames,
    H, W multiples of spatial_factor -> H / spatial_factor, W / spatial_factor.
    """

    latent_channels: int
    temporal_factor: int
    spatial_factor: int

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(C, T, h, w) of a video of this size; raises naming the bad size and the fix."""
        tf, sf = self.temporal_factor, self.spatial_factor
        if frames < 1 or (frames - 1) % tf:
            lo = (frames - 1) // tf * tf + 1
            raise ValueError(f"frames={frames} must be {tf}k+1 (e.g. {max(lo, 1)} or {lo + tf}) for this codec")
        for name, size in (("height", height), ("width", width)):
            if size % sf:
                raise ValueError(f"{name}={size} must be a multiple of {sf} (e.g. {size // sf * sf or sf})")
        return self.latent_channels, (frames - 1) // tf + 1, height // sf, width // sf

    def video_shape(self, t: int, h: int, w: int) -> tuple[int, int, int]:
        """(F, H, W) decoded from a latent grid (T, h, w)."""
        return (t - 1) * self.temporal_factor + 1, h * self.spatial_factor, w * self.spatial_factor

    def encode(self, video: Tensor) -> Tensor:
        """(B, 3, F, H, W) in [-1, 1] -> (B, C, T, h, w)."""
        raise NotImplementedError

    def decode(self, latents: Tensor) -> Tensor:
        """(B, C, T, h, w) -> (B, 3, F, H, W) in [-1, 1]."""
        raise NotImplementedError
