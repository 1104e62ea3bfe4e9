"""The option vocabulary of attention strategies, per-layer schedules, choice validation and grid fitting.

Every strategy takes its options as these small frozen objects, by keyword, and UltraGenAttention nests the same
ones for its branches, so one concept has one name everywhere:

- `WindowOptions`: per-layer window counts (rows, cols) or (t, rows, cols), cycled by layer index; RoPE positions
  (`global` or window-local); per-layer Swin half-window shifts;
- `CompressionOptions`: the spatial compression factor k of a compressed branch; its key projection; the positions
  its RoPE uses (`grid` indices of the compressed plane, or `scaled` back to the full grid); the init of its
  depthwise up-Conv3d;
- `LoRAOptions`: the branch's domain-aware LoRA on the shared q/k/v(/o) (rank 0: none);
- `Padding`: how a grid the windows or the factor do not divide is fitted (`error`, `replicate`, or the release's
  `interpolate`, optionally antialiased).

YAML gives them as mappings (`windows: {counts: [[4, 4], [5, 5]]}`); counts and factors have no default, so a partial
mapping never inherits another strategy's numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ultragen.models.attention.base import VideoGrid
from ultragen.models.lora import LORA_TARGETS, LoRAInit

PadPolicy = Literal["error", "replicate", "interpolate"]
WindowRope = Literal["global", "window"]
KeyProjection = Literal["k", "q"]
CompressedPositions = Literal["grid", "scaled"]
UpInit = Literal["identity", "box"]

PAD_POLICIES = ("error", "replicate", "interpolate")
WINDOW_ROPES = ("global", "window")
KEY_PROJECTIONS = ("k", "q")
COMPRESSED_POSITIONS = ("grid", "scaled")
UP_INITS = ("identity", "box")


#################################################################################
#                        Choice validation and schedules                        #
#################################################################################


def check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    """Return value if it is one of choices, else raise naming the option and the choices."""
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {list(choices)}")
    return value


def layer_schedule(name: str, entries: Sequence, check: Callable[[object], object] = lambda entry: entry) -> tuple:
    """A per-layer list as a tuple of `check`ed entries (layer i uses entry i mod len); raises if empty."""
    if not entries:
        raise ValueError(f"{name} is empty; give one entry or more (layer i uses entry i mod their number)")
    return tuple(check(entry) for entry in entries)


def cycle(entries: Sequence, layer_idx: int):
    """The entry of a per-layer schedule for `layer_idx`."""
    return entries[layer_idx % len(entries)]


def counts_text(counts: Sequence[int]) -> str:
    """(4, 5) -> '4x5'."""
    return "x".join(map(str, counts))


def block_entry(name: str, unit: str) -> Callable[[Sequence[int]], tuple[int, int, int]]:
    """Check of one per-layer (t, h, w) entry of positive ints counted in `unit` (tokens, tiles, blocks)."""

    def check(entry: Sequence[int]) -> tuple[int, int, int]:
        out = tuple(int(n) for n in entry)
        if len(out) != 3 or min(out) < 1:
            raise ValueError(f"{name} entry {list(out)} must be 3 positive {unit} (t, h, w), e.g. [4, 8, 8]")
        return out

    return check


#################################################################################
#                                 Option objects                                #
#################################################################################


@dataclass(frozen=True)
class Padding:
    """How a strategy fits a token grid its windows or compression factor do not divide.

    error: raise naming the grid; replicate: pad with edge tokens (cropped again after); interpolate: the release's
    bilinear resize to the nearest multiple (and back), with `antialias` when downsampling.
    """

    policy: PadPolicy = "error"
    antialias: bool = False

    def __post_init__(self) -> None:
        check_choice("padding.policy", self.policy, PAD_POLICIES)

    def without_resizing(self, what: str) -> "Padding":
        """Self, unless the policy is `interpolate`, which `what` (3D blocks of tokens) cannot use: raises then."""
        if self.policy == "interpolate":
            raise ValueError(
                f"padding policy interpolate would resize tokens across {what}; use padding: {{policy: replicate}} or "
                "error"
            )
        return self


@dataclass(frozen=True)
class WindowOptions:
    """Window counts per layer (cycled by layer index): (rows, cols) spatial windows, each a full temporal tube, or
    (t, rows, cols) 3D windows; `rope` `global` keeps each token's position in the frame, `window` numbers it inside
    its window (release); `shifts` per layer moves the windows by half a window (Swin)."""

    counts: tuple[tuple[int, ...], ...]
    rope: WindowRope = "global"
    shifts: tuple[bool, ...] = (False,)

    def __post_init__(self) -> None:
        def entry(counts) -> tuple[int, ...]:
            counts = tuple(int(n) for n in counts)
            if len(counts) not in (2, 3) or min(counts) < 1:
                raise ValueError(f"windows.counts entry {list(counts)} must be 2 or 3 positive window counts")
            return counts

        object.__setattr__(self, "counts", layer_schedule("windows.counts", self.counts, entry))
        object.__setattr__(self, "shifts", layer_schedule("windows.shifts", self.shifts, bool))
        check_choice("windows.rope", self.rope, WINDOW_ROPES)

    def check_size(self, size: int) -> "WindowOptions":
        """Self, if every counts entry has `size` axes (2: spatial windows, 3: 3D windows); raises otherwise."""
        bad = [list(c) for c in self.counts if len(c) != size]
        if bad:
            raise ValueError(f"windows.counts {bad}: this strategy takes {size} counts per layer")
        return self

    def at(self, layer_idx: int) -> tuple[int, ...]:
        """Window counts of layer `layer_idx`."""
        return cycle(self.counts, layer_idx)

    def shifted(self, layer_idx: int) -> bool:
        """Whether layer `layer_idx` shifts its windows."""
        return cycle(self.shifts, layer_idx)

    def describe(self, layer_idx: int) -> str:
        """'4x4 (cycle [4x4, 5x5])' for layer `layer_idx`."""
        return f"{counts_text(self.at(layer_idx))} (cycle [{', '.join(counts_text(c) for c in self.counts)}])"


@dataclass(frozen=True)
class CompressionOptions:
    """A compressed branch: depthwise k×k stride-k conv per frame (`factor` k), attention on the T×H/k×W/k plane,
    bilinear upsampling and a depthwise Conv3d 3×3×3.

    `key_proj` `q` reproduces the released global branch, whose keys use W_q; `positions` `grid` gives compressed
    tokens their integer plane indices in RoPE (release), `scaled` maps them back to full-grid positions k·i + (k−1)/2;
    `up_init` starts the Conv3d as the identity or the release's 1/27 box filter.
    """

    factor: int
    key_proj: KeyProjection = "k"
    positions: CompressedPositions = "grid"
    up_init: UpInit = "identity"

    def __post_init__(self) -> None:
        if self.factor < 1:
            raise ValueError(f"compression factor={self.factor} must be >= 1")
        check_choice("compression.key_proj", self.key_proj, KEY_PROJECTIONS)
        check_choice("compression.positions", self.positions, COMPRESSED_POSITIONS)
        check_choice("compression.up_init", self.up_init, UP_INITS)


@dataclass(frozen=True)
class LoRAOptions:
    """Domain-aware LoRA of a compressed branch on the shared projections `targets` ⊆ {q, k, v, o}: rank (0: none),
    alpha (default: rank, scale 1), bias and B's init (`zero`: the delta starts at zero; release: `kaiming`, bias)."""

    rank: int = 64
    targets: tuple[str, ...] = ("q", "k", "v")
    alpha: float | None = None
    bias: bool = False
    init_b: LoRAInit = "zero"

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(self.targets))
        if self.rank < 0:
            raise ValueError(f"lora.rank={self.rank} must be >= 0 (0 disables the LoRA)")
        bad = [t for t in self.targets if t not in LORA_TARGETS]
        if bad or len(set(self.targets)) != len(self.targets):
            raise ValueError(f"lora.targets={list(self.targets)}; choose distinct names from {list(LORA_TARGETS)}")
        check_choice("lora.init_b", self.init_b, ("zero", "kaiming"))


#################################################################################
#                             Grid fitting and resizing                         #
#################################################################################


def block_fit(grid: VideoGrid, block: Sequence[int], policy: PadPolicy, what: str) -> VideoGrid:
    """`grid` padded at its far ends to whole 3D blocks of `block` (t, h, w) tokens (itself if they divide it);
    raises naming `what` and the fix under the `error` policy."""
    if all(n % s == 0 for n, s in zip(grid, block)):
        return grid
    if policy == "error":
        raise ValueError(
            f"token grid {grid} (TxHxW) is not divisible by the {what}: T, H and W must be multiples of "
            f"{', '.join(map(str, block))}; choose a size that divides the grid or set padding: {{policy: replicate}}"
        )
    return VideoGrid(*(math.ceil(n / s) * s for n, s in zip(grid, block)))


def nearest_multiple(size: int, m: int) -> int:
    """Nearest positive multiple of m to size, ties to the lower one (the released resize target)."""
    lower = size // m * m
    if lower == 0:
        return m
    return lower if size - lower <= lower + m - size else lower + m


@dataclass(frozen=True)
class PlaneFit:
    """How the (h, w) plane of `grid` becomes `work`, whose sides are multiples of a window grid, and back."""

    grid: VideoGrid
    work: VideoGrid
    pad: PadPolicy
    antialias: bool = False

    @classmethod
    def plan(
        cls,
        grid: VideoGrid,
        multiples: Sequence[int],
        pad: PadPolicy,
        antialias: bool = False,
        what: str = "window grid",
    ) -> "PlaneFit":
        """Working grid for `multiples` (rows, cols) under `pad`; raises for `error` on a non-divisible grid."""
        mh, mw = multiples
        if grid.h % mh == 0 and grid.w % mw == 0:
            return cls(grid, grid, pad, antialias)
        if pad == "error":
            raise ValueError(
                f"token grid {grid} (TxHxW) is not divisible by the {what} {mh}x{mw}: H={grid.h} and W={grid.w} "
                f"must be multiples of {mh} and {mw}; choose a video size whose grid divides, change the {what}, "
                "or set padding: {policy: replicate} (or interpolate)"
            )
        if pad == "replicate":
            h, w = math.ceil(grid.h / mh) * mh, math.ceil(grid.w / mw) * mw
        else:
            h, w = nearest_multiple(grid.h, mh), nearest_multiple(grid.w, mw)
        return cls(grid, VideoGrid(grid.t, h, w), pad, antialias)

    @property
    def resamples(self) -> bool:
        """True when the plane is bilinearly resized (the released `interpolate` behaviour)."""
        return self.pad == "interpolate" and self.work != self.grid

    @property
    def source(self) -> VideoGrid:
        """Grid the window tokens are gathered from (and the output is returned on)."""
        return self.work if self.resamples else self.grid

    def positions(self) -> tuple[Tensor, Tensor]:
        """Row and column coordinates of the source plane, in units of the original `grid`."""
        if self.resamples:
            return tuple(
                (torch.arange(n, dtype=torch.float64) + 0.5) * (n0 / n) - 0.5
                for n, n0 in ((self.work.h, self.grid.h), (self.work.w, self.grid.w))
            )
        return torch.arange(self.grid.h, dtype=torch.float64), torch.arange(self.grid.w, dtype=torch.float64)


def resize_plane(x: Tensor, size: Sequence[int], antialias: bool = False) -> Tensor:
    """Bilinear (align_corners=False) resize of the (h, w) plane of x (B, T, h, w, C) to `size`."""
    b, t, h, w, c = x.shape
    if (h, w) == tuple(size):
        return x
    y = F.interpolate(
        x.reshape(b * t, h, w, c).permute(0, 3, 1, 2), size=tuple(size), mode="bilinear", align_corners=False,
        antialias=antialias,
    )  # (B·T, C, h', w'), channels-last memory
    return y.permute(0, 2, 3, 1).reshape(b, t, *size, c)


@dataclass(frozen=True)
class Compression:
    """Per-frame spatial compression of `grid` by `factor` under a pad policy.

    error: H and W must be multiples of factor; replicate: edge-pad to the next multiple (the extra
    rows are cropped after upsampling); interpolate: as released, the strided conv drops trailing
    rows/cols and bilinear upsampling stretches the compressed plane back to the full (H, W).
    """

    grid: VideoGrid
    factor: int
    pad: PadPolicy

    @classmethod
    def plan(cls, grid: VideoGrid, factor: int, pad: PadPolicy) -> "Compression":
        """Validate `grid` against `factor` under `pad`."""
        if pad == "error" and (grid.h % factor or grid.w % factor):
            raise ValueError(
                f"token grid {grid} (TxHxW) is not divisible by the compression factor {factor}: H={grid.h} and "
                f"W={grid.w} must be multiples of {factor}; choose a video size whose grid divides, change the "
                "factor, or set padding: {policy: replicate} (or interpolate)"
            )
        if min(grid.h, grid.w) < factor and pad == "interpolate":
            raise ValueError(
                f"token grid {grid} is smaller than the compression factor {factor}; use padding: {{policy: replicate}}"
            )
        return cls(grid, factor, pad)

    @property
    def padded(self) -> VideoGrid:
        """Grid the strided conv reads (replicate-padded, or cropped to whole strides)."""
        k, g = self.factor, self.grid
        rounding = math.ceil if self.pad == "replicate" else math.floor
        return VideoGrid(g.t, rounding(g.h / k) * k, rounding(g.w / k) * k)

    @property
    def compressed(self) -> VideoGrid:
        """Grid after the strided conv, T × H/k × W/k (rounded per the pad policy)."""
        p = self.padded
        return VideoGrid(p.t, p.h // self.factor, p.w // self.factor)

    def compress(self, x: Tensor, conv: Callable[[Tensor], Tensor]) -> Tensor:
        """x (B, T, H, W, C) -> (B, T, H/k, W/k, C) through `conv`, the depthwise strided conv
        (B·T, C, H, W) -> (B·T, C, h', w')."""
        b, t, h, w, c = x.shape
        p = self.padded
        if p.h > h:
            x = torch.cat([x, x[:, :, -1:].expand(-1, -1, p.h - h, -1, -1)], dim=2)
        if p.w > w:
            x = torch.cat([x, x[:, :, :, -1:].expand(-1, -1, -1, p.w - w, -1)], dim=3)
        z = conv(x.reshape(b * t, *x.shape[2:]).permute(0, 3, 1, 2))  # (B·T, C, h', w'), channels-last memory
        return z.permute(0, 2, 3, 1).reshape(b, t, *z.shape[2:], c)

    def decompress(
        self, z: Tensor, conv: Callable[..., Tensor], scale: Tensor | None = None, channels: slice = slice(None)
    ) -> Tensor:
        """z (B, T, h', w', C) -> bilinear upsampling to (H, W), depthwise Conv3d -> (B, N, C).

        `scale` (B, C) multiplies the result; it is applied to the small plane (upsampling and the depthwise
        conv are linear per channel) and to the conv bias, never to the full-size output. z may hold only the
        conv's `channels`; `conv` is the branch's `DepthwiseConv3d`.
        """
        b, c, g = z.shape[0], z.shape[-1], self.grid
        if scale is not None:
            z = z * scale[:, None, None, None]
        if self.pad == "replicate":
            up = resize_plane(z, (z.shape[2] * self.factor, z.shape[3] * self.factor))[:, :, : g.h, : g.w]
        else:
            up = resize_plane(z, (g.h, g.w))
        y = conv(up.permute(0, 4, 1, 2, 3), scale, channels)
        return y.permute(0, 2, 3, 4, 1).reshape(b, g.numel, c)  # from (B, C, T, H, W), channels-last memory


