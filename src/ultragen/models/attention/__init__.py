"""Attention strategies over a shared kernel function; see base.py for the seam."""

from ultragen.models.attention.base import (
    BACKENDS,
    AttentionContext,
    AttentionStrategy,
    VideoGrid,
    attention,
)
from ultragen.models.attention.full import FullAttention

__all__ = ["BACKENDS", "AttentionContext", "AttentionStrategy", "FullAttention", "VideoGrid", "attention"]
