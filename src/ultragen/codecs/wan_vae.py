"""WanVAE: the Wan2.1 and Wan2.2 causal 3D VAEs (diffusers `AutoencoderKLWan`) behind the VideoCodec interface."""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from ultragen.codecs.base import VideoCodec

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

# A CPU-sized random-weight AutoencoderKLWan with the real causal 4×8×8 layout: `WanVAE(config=DEBUG_CONFIG)`
# runs the real-VAE code path offline (smoke runs, tests).
DEBUG_CONFIG = dict(
    base_dim=8,
    z_dim=4,
    dim_mult=[1, 2, 2, 2],
    num_res_blocks=1,
    temperal_downsample=[False, True, True],
    latents_mean=[0.1, -0.2, 0.3, 0.0],
    latents_std=[1.5, 2.0, 0.5, 1.0],
)
# The same with the Wan2.2 VAE's 4×16×16 layout (residual down blocks, 2×2 pixel patches in and out).
WAN22_DEBUG_CONFIG = DEBUG_CONFIG | dict(
    decoder_base_dim=8, is_residual=True, patch_size=2, in_channels=12, out_channels=12, scale_factor_spatial=16,
    scale_factor_temporal=4,
)


def build_autoencoder(path: str | None, config: dict | None):
    """`AutoencoderKLWan` from a local diffusers dir, a single weights file, or a config dict (random weights)."""
    from diffusers import AutoencoderKLWan

    if path is None:
        if config is None:
            raise ValueError("WanVAE needs `path` (local VAE dir or weights file) or `config` (random weights)")
        return AutoencoderKLWan(**config)
    root = Path(path).expanduser()
    if root.is_dir():
        sub = "vae" if (root / "vae" / "config.json").is_file() else None  # a whole diffusers Wan repo
        if sub is None and not (root / "config.json").is_file():
            raise FileNotFoundError(f"{root} has neither config.json nor vae/config.json; give the diffusers VAE dir")
        return AutoencoderKLWan.from_pretrained(root, subfolder=sub, local_files_only=True)
    return load_single_file(root, config)


def load_single_file(path: Path, config: dict | None):
    """A single VAE weights file (diffusers or original Wan `Wan2.1_VAE.pth` layout); `config` defaults to Wan2.1."""
    from diffusers import AutoencoderKLWan
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    from ultragen.checkpoints import load_state_dict_into, read_state_dict

    state = read_state_dict(path)
    state = state.get("state_dict", state)
    if "encoder.conv1.weight" in state:  # the original Wan layout
        if (config or {}).get("is_residual"):
            raise ValueError(
                f"{path} is in the original Wan layout, which is converted for the Wan2.1 VAE only; for the Wan2.2 "
                "VAE point `path` at the vae/ folder of Wan2.2-TI2V-5B-Diffusers"
            )
        state = convert_wan_vae_to_diffusers(state)
    vae = AutoencoderKLWan(**(config or {}))
    load_state_dict_into(vae, state, path=str(path), format="wan_vae")
    return vae


def compression_factors(config, source: str) -> tuple[int, int]:
    """(temporal, spatial) compression stated by an `AutoencoderKLWan` config, as diffusers' own tiling reads them.

    diffusers fills keys absent from a config.json with its defaults 4 and 8 (Wan2.1's layout), so only an
    explicit null or a non-positive value is left to reject; it raises naming `source`.
    """
    factors = {name: getattr(config, name) for name in ("scale_factor_temporal", "scale_factor_spatial")}
    for name, value in factors.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(
                f"{source} sets {name}={value!r}; set it to the VAE's compression factor (scale_factor_temporal: 4; "
                "scale_factor_spatial: 8 for Wan2.1, 16 for Wan2.2)"
            )
    return factors["scale_factor_temporal"], factors["scale_factor_spatial"]


class WanVAE(VideoCodec):
    """Frozen Wan-VAE: F = 4k+1 frames -> k+1 latent frames, 8× (Wan2.1) or 16× (Wan2.2) spatial as the diffusers
    config says, latents normalised per channel.

    Encode returns the posterior mean, normalised as Wan does: (z - latents_mean) / latents_std; decode inverts
    it. Spatial tiling (sizes and strides in pixels, multiples of the spatial factor) bounds memory at 1080P/4K;
    defaults are the released UltraGen pipeline's (30×52 latent tiles, stride 15×26). Temporal chunking follows
    the causal layout inside diffusers (first frame, then chunks of 4 frames with a feature cache).
    """

    def __init__(
        self,
        path: str | None = None,
        config: dict | None = None,
        dtype: Literal["float32", "bfloat16"] = "float32",
        tiling: bool = True,
        tile_size: tuple[int, int] = (240, 416),
        tile_stride: tuple[int, int] = (120, 208),
        progress: bool = False,
    ):
        super().__init__()
        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r} is not supported; choose one of {sorted(DTYPES)}")
        self.vae = build_autoencoder(path, config).eval().requires_grad_(False)
        if dtype != "float32":
            self.vae.to(DTYPES[dtype])
        cfg = self.vae.config
        self.latent_channels = cfg.z_dim
        source = f"the VAE config.json under {path}" if path and Path(path).expanduser().is_dir() else "WanVAE `config`"
        self.temporal_factor, self.spatial_factor = compression_factors(cfg, source)
        if len(cfg.latents_mean) != cfg.z_dim or len(cfg.latents_std) != cfg.z_dim:
            raise ValueError(f"latents_mean/latents_std need z_dim={cfg.z_dim} entries each")
        stats = torch.tensor([cfg.latents_mean, cfg.latents_std], dtype=torch.float32).view(2, 1, -1, 1, 1, 1)
        self.register_buffer("latents_mean", stats[0], persistent=False)  # (1, C, 1, 1, 1)
        self.register_buffer("latents_std", stats[1], persistent=False)
        self.dtype = DTYPES[dtype]
        self.tiling = tiling
        self.tile_size = tuple(tile_size)
        self.tile_stride = tuple(tile_stride)
        self.progress = progress
        self.vae.enable_slicing()  # one video at a time
        if tiling:
            bad = [s for s in (*self.tile_size, *self.tile_stride) if s % self.spatial_factor or s <= 0]
            if bad or any(st > sz for st, sz in zip(self.tile_stride, self.tile_size)):
                raise ValueError(
                    f"tile_size={self.tile_size} / tile_stride={self.tile_stride} must be positive multiples of "
                    f"{self.spatial_factor} pixels with stride <= size"
                )
            self.vae.enable_tiling(*self.tile_size, *self.tile_stride)

    def train(self, mode: bool = True) -> "WanVAE":
        """The VAE stays frozen in eval mode whatever the surrounding module does."""
        super().train(mode)
        self.vae.eval()
        return self

    def normalize(self, z: Tensor) -> Tensor:
        """Raw posterior latents -> unit-scale latents (B, C, T, h, w)."""
        return (z.float() - self.latents_mean) / self.latents_std

    def denormalize(self, latents: Tensor) -> Tensor:
        """Unit-scale latents -> raw VAE latents (B, C, T, h, w)."""
        return latents.float() * self.latents_std + self.latents_mean

    @torch.no_grad()
    def encode(self, video: Tensor) -> Tensor:
        """(B, 3, F, H, W) in [-1, 1] -> normalised (B, C, T, h, w) float32."""
        self.latent_shape(*video.shape[2:])
        z = self.vae.encode(video.to(self.dtype)).latent_dist.mode()  # (B, C, T, h, w)
        return self.normalize(z)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Normalised (B, C, T, h, w) -> (B, 3, F, H, W) float32 in [-1, 1]."""
        if latents.shape[1] != self.latent_channels:
            raise ValueError(f"latents have {latents.shape[1]} channels, this VAE expects {self.latent_channels}")
        with self.decode_progress(latents.shape):
            video = self.vae.decode(self.denormalize(latents).to(self.dtype)).sample
        return video.float()

    def decode_calls(self, shape: torch.Size) -> int:
        """Decoder calls diffusers makes for latents of `shape`: one per latent frame, tile and video."""
        b, _, t, h, w = shape
        tile_h, tile_w = (s // self.spatial_factor for s in self.tile_size)
        if not self.tiling or (h <= tile_h and w <= tile_w):
            return b * t
        stride_h, stride_w = (s // self.spatial_factor for s in self.tile_stride)
        return b * t * math.ceil(h / stride_h) * math.ceil(w / stride_w)

    @contextmanager
    def decode_progress(self, shape: torch.Size):
        """A tqdm bar ticking once per decoder call while decoding (when `progress` is on)."""
        if not self.progress:
            yield
            return
        from tqdm.auto import tqdm

        bar = tqdm(total=self.decode_calls(shape), desc="decoding", unit="tile-frame", leave=False)

        def tick(*_) -> None:
            bar.update()

        hook = self.vae.decoder.register_forward_hook(tick)
        try:
            yield
        finally:
            hook.remove()
            bar.close()

    def extra_repr(self) -> str:
        tiles = f"tile_size={self.tile_size}, tile_stride={self.tile_stride}" if self.tiling else "tiling=False"
        return f"channels={self.latent_channels}, dtype={str(self.dtype).removeprefix('torch.')}, {tiles}"
