"""Attention strategies over a shared kernel function; see base.py for the seam."""

from ultragen.models.attention.adaptive_block import AdaptiveBlockAttention
from ultragen.models.attention.base import (
    BACKENDS,
    AttentionBackend,
    AttentionContext,
    AttentionStrategy,
    VideoGrid,
    attention,
)
from ultragen.models.attention.full import FullAttention
from ultragen.models.attention.global_compressed import GlobalCompressedAttention
from ultragen.models.attention.global_local import UltraGenAttention
from ultragen.models.attention.hierarchical import HierarchicalAttention
from ultragen.models.attention.multiscale import MultiScaleWindowAttention
from ultragen.models.attention.options import CompressionOptions, LoRAOptions, Padding, WindowOptions
from ultragen.models.attention.sliding_tile import SlidingTileAttention
from ultragen.models.attention.topk_block import TopKBlockAttention
from ultragen.models.attention.window import LocalWindowAttention, SwinAttention

__all__ = [
    "AdaptiveBlockAttention",
    "BACKENDS",
    "AttentionBackend",
    "AttentionContext",
    "AttentionStrategy",
    "CompressionOptions",
    "FullAttention",
    "GlobalCompressedAttention",
    "HierarchicalAttention",
    "LoRAOptions",
    "LocalWindowAttention",
    "MultiScaleWindowAttention",
    "Padding",
    "SlidingTileAttention",
    "SwinAttention",
    "TopKBlockAttention",
    "UltraGenAttention",
    "VideoGrid",
    "WindowOptions",
    "attention",
]
