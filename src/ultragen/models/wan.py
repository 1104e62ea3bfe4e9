"""WanDiT: the Wan2.1 text-to-video diffusion transformer with a pluggable self-attention strategy.

Parameter names are Wan2.1's own, so an official checkpoint loads without a conversion table.
Widths come from `configs/model/*.yaml`; nothing here knows a preset's numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from einops import rearrange
from torch import Tensor, nn

from ultragen.models.attention import AttentionBackend, AttentionContext, AttentionStrategy, FullAttention, VideoGrid
from ultragen.models.attention.base import resolve_layers
from ultragen.models.blocks import DiTBlock
from ultragen.models.init import init_leaf
from ultragen.models.rope import RotaryTables

# (dim, num_heads, layer_idx, freq_dim, backend) -> strategy; YAML gives the rest of its arguments by keyword
StrategyFactory = Callable[[int, int, int, int, AttentionBackend], AttentionStrategy]


#################################################################################
#                        Timestep embedding and output head                     #
#################################################################################


def sinusoidal_embedding(dim: int, t: Tensor) -> Tensor:
    """Wan's sin_dim(t) = [cos(t·ω_j), sin(t·ω_j)], ω_j = 10000^(-j/(dim/2)), in float64. (B,) -> (B, dim)."""
    half = dim // 2
    t = t.to(torch.float64)
    angles = torch.outer(t, torch.pow(10000, -torch.arange(half, dtype=torch.float64, device=t.device) / half))
    return torch.cat([angles.cos(), angles.sin()], dim=1)


def sincos_position_embedding(dim: int, grid: VideoGrid, device: torch.device | None = None) -> Tensor:
    """Fixed 3-D sin-cos embedding of token positions (DiT/Latte style), (N, dim) in (t, h, w) order.

    Each spatial axis gets 2·⌊dim/6⌋ channels and time the rest; an axis of n channels embeds the token index
    p as [sin(p·ω_j), cos(p·ω_j)], ω_j = 10000^(-j/(n/2)). Wan has no absolute position (RoPE only).
    """
    spatial = dim // 6 * 2
    parts = []
    for n, size in zip((dim - 2 * spatial, spatial, spatial), grid):
        omega = torch.pow(10000.0, -torch.arange(n // 2, dtype=torch.float64, device=device) / (n // 2))
        parts.append(torch.outer(torch.arange(size, dtype=torch.float64, device=device), omega))
    t, h, w = (torch.cat([a.sin(), a.cos()], dim=1) for a in parts)
    embedding = torch.cat(
        [
            t[:, None, None].expand(-1, grid.h, grid.w, -1),
            h[None, :, None].expand(grid.t, -1, grid.w, -1),
            w[None, None, :].expand(grid.t, grid.h, -1, -1),
        ],
        dim=-1,
    )
    return embedding.flatten(0, 2).float()


def masked_mean(context: Tensor) -> Tensor:
    """(B, L, D) text states -> (B, D) mean over the tokens that are not padding (all-zero rows)."""
    valid = context.abs().amax(-1, keepdim=True) > 0  # (B, L, 1)
    return (context * valid).sum(1) / valid.sum(1).clamp_min(1)


def xavier_linear(m: nn.Linear | nn.Conv3d) -> None:
    """Xavier-uniform weight over (out, in·kernel), zero bias."""
    nn.init.xavier_uniform_(m.weight.flatten(1))
    if m.bias is not None:
        nn.init.zeros_(m.bias)


class Head(nn.Module):
    """Final AdaLN-modulated LayerNorm and linear projection to patch pixels."""

    def __init__(self, dim: int, out_dim: int, patch_size: Sequence[int], eps: float = 1e-6):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.head = nn.Linear(dim, out_dim * math.prod(patch_size))
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(self, x: Tensor, t_emb: Tensor) -> Tensor:
        """x (B, N, C), t_emb (B, 1, C) or per token (B, N, C) -> (B, N, p_t·p_h·p_w·out_dim)."""
        shift, scale = (self.modulation.float().unsqueeze(1) + t_emb.float().unsqueeze(2)).unbind(2)
        return self.head((self.norm(x).float() * (1 + scale) + shift).to(x.dtype))


#################################################################################
#                                   WanDiT                                      #
#################################################################################


class WanDiT(nn.Module):
    """Wan2.1 T2V / Wan2.2 TI2V DiT. (B, in_dim, F, H, W) latents, (B,) or per-token (B, N) timesteps in [0, 1000],
    (B, L, text_dim) text -> velocity.

    `in_dim` and `text_dim` come first because they follow the codec and the text encoder
    (the LightningModule supplies them); `attention` builds the strategy of every layer not in
    `full_attention_layers` (negative indices count from the last layer), which keep `FullAttention`.
    `timestep_dtype: bfloat16` rounds t to bf16 before embedding, as the UltraGen release does (spacing 4 on
    [512, 1024), so gates and modulation see quantised t).
    `absolute_position` adds `sincos_position_embedding` to the patch embeddings (off in Wan): RoPE alone gives
    a small model trained for minutes no sense of where in the frame a token is, which prompts like "moving
    rightwards" (start on the left) need; it has no weights, so Wan checkpoints load either way.
    `pooled_text` adds an MLP of the text states' mean over the non-padded tokens to the time embedding (off in
    Wan), so the caption also reaches every block's AdaLN modulation, as the pooled text vector does in SD3 and
    Flux and the class embedding in DiT; cross-attention alone lets a small model trained for minutes pick up the
    caption's colour but not its direction.
    `attention_backend` is the kernel of every self- and cross-attention (`BACKENDS`); the network hands it, with
    its `dim`, `num_heads` and `freq_dim`, to each layer's strategy.
    """

    def __init__(
        self,
        in_dim: int,
        text_dim: int,
        dim: int,
        ffn_dim: int,
        num_heads: int,
        num_layers: int,
        out_dim: int | None = None,
        freq_dim: int = 256,
        patch_size: tuple[int, int, int] = (1, 2, 2),
        eps: float = 1e-6,
        cross_attn_norm: bool = True,
        rope_theta: float = 10000.0,
        attention: StrategyFactory = FullAttention,
        full_attention_layers: list[int] | None = None,
        timestep_dtype: Literal["float32", "bfloat16"] = "float32",
        absolute_position: bool = False,
        pooled_text: bool = False,
        attention_backend: str = "sdpa",
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        full = resolve_layers("full_attention_layers", full_attention_layers or [], num_layers)
        self.in_dim, self.text_dim, self.dim = in_dim, text_dim, dim
        self.out_dim = out_dim or in_dim
        self.freq_dim = freq_dim
        self.num_heads = num_heads
        self.patch_size = tuple(patch_size)
        self.full_attention_layers = full
        self.timestep_dtype = getattr(torch, timestep_dtype)
        self.absolute_position = absolute_position
        self.attention_backend = backend = AttentionBackend(attention_backend)

        self.patch_embedding = nn.Conv3d(in_dim, dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim * 6))
        self.pooled_text_embedding = (
            nn.Sequential(nn.Linear(text_dim, dim), nn.SiLU(), nn.Linear(dim, dim)) if pooled_text else None
        )
        self.blocks = nn.ModuleList(
            DiTBlock(
                dim,
                ffn_dim,
                num_heads,
                (FullAttention if i in full else attention)(dim, num_heads, i, freq_dim, backend),
                eps=eps,
                cross_attn_norm=cross_attn_norm,
                backend=backend,
            )
            for i in range(num_layers)
        )
        self.head = Head(dim, self.out_dim, self.patch_size, eps)
        self.rope = RotaryTables(dim // num_heads, theta=rope_theta)
        self.init_weights()

    def init_weights(self) -> None:
        """Wan2.1 initialisation; strategy modules keep their own initialisation. Each step sets one module's own
        tensors through `init_leaf`, so a partitioned build initialises them identically."""
        strategies = {id(m) for b in self.blocks for m in b.self_attn.strategy.modules()}
        for m in self.modules():
            if isinstance(m, nn.Linear) and id(m) not in strategies:
                init_leaf(m, xavier_linear)
        init_leaf(self.patch_embedding, xavier_linear)
        for m in (*self.text_embedding.modules(), *self.time_embedding.modules()):
            if isinstance(m, nn.Linear):
                init_leaf(m, lambda m: nn.init.normal_(m.weight, std=0.02))
        if self.pooled_text_embedding is not None:  # starts as the network without it (Wan weights behave unchanged)
            init_leaf(self.pooled_text_embedding[-1], lambda m: nn.init.zeros_(m.weight))
        init_leaf(self.head.head, lambda m: nn.init.zeros_(m.weight))

    def token_grid(self, frames: int, height: int, width: int) -> VideoGrid:
        """Token grid of a latent of size (frames, height, width); raises if not divisible by the patch."""
        sizes = (frames, height, width)
        if any(s % p for s, p in zip(sizes, self.patch_size)):
            raise ValueError(
                f"latent size {sizes} is not divisible by patch_size {self.patch_size}; "
                "choose video sizes whose latent grid is a multiple of the patch"
            )
        return VideoGrid(*(s // p for s, p in zip(sizes, self.patch_size)))

    def forward(self, x: Tensor, t: Tensor, context: Tensor) -> Tensor:
        """x (B, C, F, H, W), t (B,) or one per token (B, N), context (B, L, text_dim) -> (B, out_dim, F, H, W).

        Per-token timesteps (Wan2.2 TI2V: the clean first latent frame at t = 0) modulate each token with its own
        t; tokens are in (f, h, w) order, N = grid.t·grid.h·grid.w. Attention strategies' gates see the clip's
        largest t, the noise level of its noisy tokens.
        """
        if x.shape[1] != self.in_dim:
            raise ValueError(f"latent has {x.shape[1]} channels but the DiT expects in_dim={self.in_dim}")
        grid = self.token_grid(*x.shape[2:])
        if t.ndim not in (1, 2) or (t.ndim == 2 and t.shape[1] != grid.numel):
            raise ValueError(
                f"timesteps of shape {tuple(t.shape)} are neither one per clip (B,) nor one per token "
                f"(B, {grid.numel}) for the {tuple(grid)} token grid"
            )
        x = self.patch_embedding(x).flatten(2).transpose(1, 2)  # (B, N, C)
        if self.absolute_position:
            x = x + sincos_position_embedding(self.dim, grid, x.device).to(x.dtype)
        freq = sinusoidal_embedding(self.freq_dim, t.to(self.timestep_dtype).flatten()).float().unflatten(0, t.shape)
        t_emb = self.time_embedding(freq.to(x.dtype))  # (B, C) or per token (B, N, C)
        t_emb = t_emb if t_emb.ndim == 3 else t_emb.unsqueeze(1)  # (B, 1 or N, C)
        if self.pooled_text_embedding is not None:
            t_emb = t_emb + self.pooled_text_embedding(masked_mean(context)).unsqueeze(1)
        t_mod = self.time_projection(t_emb).unflatten(-1, (6, self.dim))  # (B, 1 or N, 6, C)
        context = self.text_embedding(context)  # (B, L, C)
        # strategies' gates see one timestep per clip: with per-token t, the noise level of its noisy tokens
        clip_freq = freq if t.ndim == 1 else sinusoidal_embedding(self.freq_dim, t.amax(1).to(self.timestep_dtype)).float()
        ctx = AttentionContext(grid=grid, rope=self.rope, timestep_freq=clip_freq)
        for block in self.blocks:
            x = block(x, t_mod, context, ctx)
        x = self.head(x, t_emb)  # (B, N, p·out_dim)
        return self.unpatchify(x, grid)

    def unpatchify(self, x: Tensor, grid: VideoGrid) -> Tensor:
        """(B, N, p_t·p_h·p_w·C) -> (B, C, T·p_t, H·p_h, W·p_w)."""
        pt, ph, pw = self.patch_size
        return rearrange(
            x, "b (f h w) (x y z c) -> b c (f x) (h y) (w z)", f=grid.t, h=grid.h, w=grid.w, x=pt, y=ph, z=pw
        )
