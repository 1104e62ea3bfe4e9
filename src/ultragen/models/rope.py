"""3D rotary position embedding as in Wan2.1: head_dim split between t/h/w, adjacent-channel pairs."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class Rotary(NamedTuple):
    """cos/sin tables for L tokens, each (L, head_dim // 2)."""

    cos: Tensor
    sin: Tensor


class RotaryTables:
    """Per-axis rotary frequencies; angles for any (possibly fractional) t/h/w coordinates.

    Wan2.1 splits head_dim d into d - 4*(d//6) channels for t and 2*(d//6) each for h and w
    (44/42/42 at d = 128), with frequencies theta^(-2j/axis_dim) per axis.
    """

    def __init__(self, head_dim: int, theta: float = 10000.0):
        if head_dim % 2:
            raise ValueError(f"head_dim={head_dim} must be even for rotary embeddings")
        self.head_dim = head_dim
        self.theta = theta
        hw = 2 * (head_dim // 6)
        self.axis_dims = (head_dim - 2 * hw, hw, hw)
        self.omegas = [
            1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64, device="cpu") / d) for d in self.axis_dims
        ]
        self._cache: dict[tuple, Rotary] = {}

    def rotary(self, t: Tensor, h: Tensor, w: Tensor) -> Rotary:
        """Tables for the meshgrid of 1D coordinates t, h, w, flattened in (t, h, w) order."""
        angles = [torch.outer(p.to(torch.float64).cpu(), om) for p, om in zip((t, h, w), self.omegas)]
        nt, nh, nw = (a.shape[0] for a in angles)
        full = torch.cat(
            [
                angles[0][:, None, None].expand(nt, nh, nw, -1),
                angles[1][None, :, None].expand(nt, nh, nw, -1),
                angles[2][None, None, :].expand(nt, nh, nw, -1),
            ],
            dim=-1,
        ).reshape(nt * nh * nw, -1)
        return Rotary(full.cos().float(), full.sin().float())

    def for_grid(self, t: int, h: int, w: int, device: torch.device | str = "cpu") -> Rotary:
        """Tables for the integer grid 0..t-1 × 0..h-1 × 0..w-1 (cached per grid and device)."""
        key = (t, h, w, str(device))
        if key not in self._cache:
            r = self.rotary(*(torch.arange(n, device="cpu") for n in (t, h, w)))
            self._cache[key] = Rotary(r.cos.to(device), r.sin.to(device))
        return self._cache[key]


def apply_rope(x: Tensor, rope: Rotary) -> Tensor:
    """Rotate adjacent channel pairs of x (B, L, H, D) by tables (L, D/2) or (B, L, D/2)."""
    cos, sin = rope.cos, rope.sin
    if cos.dim() == 2:
        cos, sin = cos[None], sin[None]
    cos, sin = cos[:, :, None].to(x.device), sin[:, :, None].to(x.device)  # (B|1, L, 1, D/2)
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
    return out.to(x.dtype)
