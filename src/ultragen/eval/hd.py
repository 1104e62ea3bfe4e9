"""Native-resolution metrics: HD-MSE and HD-LPIPS (no-reference detail), patch HD-FVD (generated vs reference set).

HD-MSE and HD-LPIPS (paper Eqs. 14-15) sum, over k in `scales` (3, 4, 5), the distance between a frame v and
up(down_{2^k}(v)), i.e. the detail finer than 2^k pixels. Caveat (paper, METHOD.md §3.5): they are
no-reference and reward high-frequency energy, so noise, ringing or over-sharpening score like real detail and a
blurry video scores low (native Wan 1080P scores lowest). Read them next to HD-FVD, which compares with real video.

Protocol, every choice in `MetricSettings` (defaults from METHOD.md §3.5):
- `frames` uniformly sampled frames per video (0 = all);
- per frame and k: `down` to (H // 2^k, W // 2^k) ('area': box average; 'bicubic': antialiased bicubic), `up`
  back to (H, W) (align_corners=False), clamped to [0, 255];
- HD-MSE: MSE over pixels and channels on the scale [0, `value_range`] (255 gives the paper's magnitudes);
  HD-LPIPS: LPIPS v0.1 (`lpips_net`) on [-1, 1] at full resolution;
- mean over frames, sum over k; the suite averages over videos.

HD-FVD tiles each video into non-overlapping `patch` x `patch` windows at native resolution (never resized) and
`clip_frames`-frame clips (`frame_policy` 'uniform': one clip of uniformly sampled frames; 'chunks': consecutive
non-overlapping clips, leftover frames dropped). Rows and columns that cannot fill a patch are dropped
(`remainder` 'center': the grid is centred, the strip split between both sides; 'corner': the grid starts at the
top-left, the strip dropped at the bottom and right). `patch_tiling` gives the count and pixel coverage: 1088x1920
-> 4x8 = 32 patches (76.9%), 2160x3840 -> 9x17 = 153 (92.6%). The Fréchet distance between all generated and all
reference patch-clip features is torchmetrics' (eigenvalues of S1 S2; no hand-written matrix square root).

Videos are (F, H, W, 3) or (3, F, H, W) uint8 arrays or tensors; sizes may differ between videos.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torchmetrics.image.fid import _compute_fid

from ultragen.eval.features import FvdBackbone, LpipsNet
from ultragen.eval.objects import Video
from ultragen.models.attention.options import check_choice

DownKernel = Literal["area", "bicubic"]
UpKernel = Literal["bicubic", "bilinear"]
FramePolicy = Literal["uniform", "chunks"]
RemainderPolicy = Literal["center", "corner"]


@dataclass(frozen=True)
class MetricSettings:
    """Every protocol choice of the HD, CLIP and temporal metrics, in one place (see the module docstring)."""

    scales: tuple[int, ...] = (3, 4, 5)  # k: down/up factor 2^k
    down: DownKernel = "area"
    up: UpKernel = "bicubic"
    value_range: float = 255.0  # HD-MSE pixel scale [0, value_range]
    frames: int = 16  # uniformly sampled frames per video for HD-MSE, HD-LPIPS and the CLIP score; 0 = all
    lpips_net: LpipsNet = "alex"
    patch: int = 224  # HD-FVD patch side (pixels)
    clip_frames: int = 16  # HD-FVD frames per patch-clip
    frame_policy: FramePolicy = "uniform"
    remainder: RemainderPolicy = "center"
    fvd_backbone: FvdBackbone = "i3d"
    batch: int = 8  # frames or patch-clips per resampling / backbone call

    def __post_init__(self):
        for name, kind in (("down", DownKernel), ("up", UpKernel), ("frame_policy", FramePolicy),
                           ("remainder", RemainderPolicy), ("lpips_net", LpipsNet), ("fvd_backbone", FvdBackbone)):
            check_choice(name, getattr(self, name), get_args(kind))
        if not self.scales or min(self.scales) < 1:
            raise ValueError(f"scales={self.scales} must be positive exponents k (factor 2^k), at least one")
        for name in ("patch", "clip_frames", "batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be positive")
        if self.frames < 0 or self.value_range <= 0:
            raise ValueError(f"frames={self.frames} must be >= 0 (0 = all) and value_range={self.value_range} > 0")


DEFAULTS = MetricSettings()


#################################################################################
#                                    Frames                                     #
#################################################################################


def video_frames(video: Video) -> Tensor:
    """(F, 3, H, W) uint8 tensor (a view, same device) of an (F, H, W, 3) or (3, F, H, W) uint8 array or tensor."""
    x = video if isinstance(video, Tensor) else torch.from_numpy(np.ascontiguousarray(video))
    if x.dtype != torch.uint8:
        raise ValueError(f"video dtype {x.dtype} is not uint8; map [-1, 1] to ((x + 1) * 127.5).round() first")
    if x.ndim == 4 and x.shape[-1] == 3:
        return x.permute(0, 3, 1, 2)
    if x.ndim == 4 and x.shape[0] == 3:
        return x.permute(1, 0, 2, 3)
    raise ValueError(f"video of shape {tuple(x.shape)} is not (F, H, W, 3) or (3, F, H, W)")


def uniform_frames(total: int, count: int) -> list[int]:
    """`count` distinct frame indices evenly spread over [0, total - 1]; all frames if count is 0 or >= total."""
    if total < 1:
        raise ValueError(f"a video of {total} frames has nothing to score")
    if count == 0 or count >= total:
        return list(range(total))
    return np.linspace(0, total - 1, count).round().astype(int).tolist()


def module_device(module: nn.Module) -> torch.device:
    """Device of a module's first parameter or buffer (CPU if it has none)."""
    return next(itertools.chain(module.parameters(), module.buffers()), torch.empty(0)).device


#################################################################################
#                                HD-MSE, HD-LPIPS                               #
#################################################################################


def resample(frames: Tensor, factor: int, settings: MetricSettings = DEFAULTS) -> Tensor:
    """(N, C, H, W) float in [0, 255] -> down by `factor` to (H // factor, W // factor), up to (H, W), clamped."""
    h, w = frames.shape[-2:]
    if h < factor or w < factor:
        raise ValueError(f"frame {h}x{w} is smaller than the resampling factor {factor}; HD metrics need frames of "
                         f"at least 2^max(scales) px per side (or smaller MetricSettings.scales)")
    low = F.interpolate(frames, size=(h // factor, w // factor), mode=settings.down,
                        **({} if settings.down == "area" else {"align_corners": False, "antialias": True}))
    return F.interpolate(low, size=(h, w), mode=settings.up, align_corners=False).clamp(0, 255)


def _hd_sum(frames: Tensor, settings: MetricSettings, device: torch.device,
            distance: Callable[[Tensor, Tensor], Tensor]) -> float:
    """Sum over k of the mean over sampled (F, 3, H, W) frames of distance(v, up(down_{2^k}(v))), (N,) per frame."""
    picks = frames[uniform_frames(len(frames), settings.frames)]
    total = 0.0
    for k in settings.scales:
        per_frame = []
        for chunk in picks.split(settings.batch):
            x = chunk.to(device).float()  # (N, 3, H, W) in [0, 255]
            per_frame.append(distance(x, resample(x, 2**k, settings)))
        total += torch.cat(per_frame).mean().item()
    return total


@torch.no_grad()
def hd_mse(video: Video, settings: MetricSettings = DEFAULTS) -> float:
    """HD-MSE of one video on [0, settings.value_range] (higher = more fine detail, or more noise)."""
    scale2 = (settings.value_range / 255) ** 2
    frames = video_frames(video)
    return _hd_sum(frames, settings, frames.device, lambda a, b: (a - b).square().mean((1, 2, 3)) * scale2)


@torch.no_grad()
def hd_lpips(video: Video, lpips: nn.Module, settings: MetricSettings = DEFAULTS) -> float:
    """HD-LPIPS of one video with an LPIPS module (`features.load_lpips`) taking two (N, 3, H, W) in [-1, 1]."""

    def distance(a: Tensor, b: Tensor) -> Tensor:
        return lpips(a / 127.5 - 1, b / 127.5 - 1).flatten()

    return _hd_sum(video_frames(video), settings, module_device(lpips), distance)


#################################################################################
#                                     HD-FVD                                    #
#################################################################################


@dataclass(frozen=True)
class PatchTiling:
    """Non-overlapping patch-clips of one video: a rows x cols grid at (top, left), frame indices per clip."""

    height: int
    width: int
    patch: int
    rows: int
    cols: int
    top: int
    left: int
    clips: tuple[tuple[int, ...], ...]

    @property
    def count(self) -> int:
        """Patch-clips per video."""
        return self.rows * self.cols * len(self.clips)

    @property
    def coverage(self) -> float:
        """Fraction of the frame's pixels inside a patch."""
        return self.rows * self.cols * self.patch**2 / (self.height * self.width)


def patch_grid(height: int, width: int, settings: MetricSettings = DEFAULTS) -> tuple[int, int, int, int]:
    """(rows, cols, top, left) of the non-overlapping `settings.patch` grid of a frame (remainder policy applied)."""
    p = settings.patch
    if height < p or width < p:
        raise ValueError(f"frame {height}x{width} holds no {p}x{p} patch; patch metrics need frames of at least {p} "
                         f"px per side (or a smaller MetricSettings.patch)")
    rows, cols = height // p, width // p
    top, left = ((height - rows * p) // 2, (width - cols * p) // 2) if settings.remainder == "center" else (0, 0)
    return rows, cols, top, left


def patch_tiling(frames: int, height: int, width: int, settings: MetricSettings = DEFAULTS) -> PatchTiling:
    """Patch grid and clips of a (frames, height, width) video under `settings` (patch, clip_frames, policies)."""
    p, t = settings.patch, settings.clip_frames
    rows, cols, top, left = patch_grid(height, width, settings)
    if frames < t:
        raise ValueError(f"a video of {frames} frames holds no {t}-frame clip; use longer videos or a smaller "
                         f"MetricSettings.clip_frames")
    if settings.frame_policy == "uniform":
        clips = (tuple(uniform_frames(frames, t)),)
    else:
        clips = tuple(tuple(range(c * t, (c + 1) * t)) for c in range(frames // t))
    return PatchTiling(height, width, p, rows, cols, top, left, clips)


def patch_clips(video: Video, settings: MetricSettings = DEFAULTS) -> tuple[Tensor, PatchTiling]:
    """(N, 3, T, patch, patch) uint8 patch-clips of one video at native resolution, and its tiling."""
    frames = video_frames(video)  # (F, 3, H, W)
    tiling = patch_tiling(len(frames), frames.shape[2], frames.shape[3], settings)
    p = tiling.patch
    grid = frames[:, :, tiling.top:tiling.top + tiling.rows * p, tiling.left:tiling.left + tiling.cols * p]
    clips = grid[torch.tensor(tiling.clips, device=frames.device)]  # (clips, T, 3, rows*p, cols*p)
    return rearrange(clips, "n t c (r p) (q s) -> (n r q) c t p s", p=p, s=p), tiling


@torch.no_grad()
def patch_features(videos: Sequence[Video], backbone: nn.Module,
                   settings: MetricSettings = DEFAULTS) -> tuple[Tensor, list[PatchTiling]]:
    """(N, D) float64 backbone features of every patch-clip of `videos` (clips fed in [0, 255]), and the tilings."""
    device, features, tilings = module_device(backbone), [], []
    for video in videos:
        clips, tiling = patch_clips(video, settings)
        tilings.append(tiling)
        for chunk in clips.split(settings.batch):  # (B, 3, T, patch, patch)
            features.append(backbone(chunk.to(device).float()).flatten(1).double().cpu())
    return torch.cat(features), tilings


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to (N, D) and (M, D) features, in float64.

    Uses torchmetrics' `_compute_fid` (private in torchmetrics 1.9; eigenvalues of S1 S2, no matrix square root)."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or len(a) < 2 or len(b) < 2:
        raise ValueError(f"features of shapes {tuple(a.shape)} and {tuple(b.shape)} must be (N, D) and (M, D) "
                         f"with N, M >= 2; pass more videos or patch-clips")
    a, b = a.double(), b.double()
    return float(_compute_fid(a.mean(0), torch.cov(a.T), b.mean(0), torch.cov(b.T)))


@dataclass(frozen=True)
class FVDResult:
    """HD-FVD, the patch-clip counts of both sets and the mean pixel coverage of the generated videos."""

    distance: float
    generated_patches: int
    reference_patches: int
    coverage: float


def hd_fvd(generated: Sequence[Video], references: Sequence[Video], backbone: nn.Module,
           settings: MetricSettings = DEFAULTS) -> FVDResult:
    """Fréchet distance between the patch-clip features of the generated and the reference videos."""
    gen, gen_tilings = patch_features(generated, backbone, settings)
    ref, _ = patch_features(references, backbone, settings)
    coverage = float(np.mean([t.coverage for t in gen_tilings]))
    return FVDResult(frechet_distance(gen, ref), len(gen), len(ref), coverage)
