"""Spatially compressed global attention (UltraGen's global branch) and the compression helpers it shares.

Depthwise Conv2d k×k stride k (init 1/k², i.e. average pooling) per frame, attention over the compressed
T×H/k×W/k tokens with domain-aware LoRA deltas on the shared q/k/v, bilinear upsampling back, then a
depthwise Conv3d 3×3×3 (init `identity` or the release's 1/27 `box`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ultragen.models.attention.base import (
    AttentionBackend,
    AttentionContext,
    AttentionCost,
    AttentionStrategy,
    VideoGrid,
)
from ultragen.models.attention.options import (
    UP_INITS,
    Compression,
    CompressionOptions,
    KeyProjection,
    LoRAOptions,
    Padding,
    UpInit,
    check_choice,
)
from ultragen.models.attention.window import plane_rotary
from ultragen.models.init import init_leaf
from ultragen.models.lora import DomainLoRA
from ultragen.models.rope import apply_rope

#################################################################################
#                               Depthwise convolutions                          #
#################################################################################


class DepthwiseConv3dFunction(torch.autograd.Function):
    """Depthwise Conv3d 3×3×3, padding 1, per-sample bias, with a faster backward than PyTorch's CPU kernel (~10×).

    grad_input is the conv with the flipped kernel; grad_weight is gathered per temporal tap with
    depthwise Conv2d weight gradients. Inputs in channels-last-3d memory keep every step copy-free.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        """x (B, C, T, H, W), weight (C, 1, 3, 3, 3), bias (B, C) -> (B, C, T, H, W)."""
        ctx.save_for_backward(x, weight)
        if x.shape[0] == 1:  # the bias is fused into the conv
            return F.conv3d(x, weight, bias[0].to(x.dtype), padding=1, groups=weight.shape[0])
        return F.conv3d(x, weight, padding=1, groups=weight.shape[0]) + bias[:, :, None, None, None].to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        c, dtype = weight.shape[0], grad.dtype
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv3d(grad, weight.flip(2, 3, 4).to(dtype), padding=1, groups=c).to(x.dtype)
        if ctx.needs_input_grad[1]:
            b, _, t, h, w = x.shape
            frames = F.pad(x.to(dtype), (0, 0, 0, 0, 1, 1))  # (B, C, T + 2, H, W), zero frames at both ends
            g2 = grad.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)  # (B·T, C, H, W)
            taps = []
            for a in range(3):
                tap = frames[:, :, a : a + t].permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
                taps.append(
                    torch.ops.aten.convolution_backward(
                        g2, tap, weight[:, :, a].to(dtype), None, [1, 1], [1, 1], [1, 1], False, [0, 0], c,
                        [False, True, False],
                    )[1]
                )
            grad_w = torch.stack(taps, dim=2).to(weight.dtype)  # (C, 1, 3, 3, 3)
        if ctx.needs_input_grad[2]:
            grad_b = grad.sum((2, 3, 4))  # (B, C)
        return grad_x, grad_w, grad_b


class DepthwiseConv3d(nn.Conv3d):
    """Depthwise Conv3d 3×3×3 (padding 1), initialised as the identity (Dirac) or a 1/27 box filter, bias 0."""

    def __init__(self, dim: int, init: UpInit = "identity"):
        super().__init__(dim, dim, 3, padding=1, groups=dim)
        self.init = check_choice("up_init", init, UP_INITS)
        if init == "box":
            nn.init.constant_(self.weight, 1.0 / 27)
        else:
            nn.init.dirac_(self.weight, groups=dim)
        nn.init.zeros_(self.bias)

    def forward(self, x: Tensor, scale: Tensor | None = None, channels: slice = slice(None)) -> Tensor:
        """x (B, C', T, H, W) -> (B, C', T, H, W); `scale` (B, C') multiplies the bias (x arrives pre-scaled).

        x holds the conv's `channels` (C' of C; all by default): the conv is depthwise, so a share of the
        channels convolves on its own (sequence parallelism gives each rank a share)."""
        weight, bias = self.weight[channels], self.bias[channels]
        bias = bias.expand(x.shape[0], -1) if scale is None else scale * bias
        return DepthwiseConv3dFunction.apply(x, weight, bias)


def down_conv(dim: int, factor: int) -> nn.Conv2d:
    """Depthwise Conv2d k×k stride k, weights 1/k² (average pooling), bias 0."""
    conv = nn.Conv2d(dim, dim, factor, stride=factor, groups=dim)

    def average(m: nn.Conv2d) -> None:
        nn.init.constant_(m.weight, 1.0 / factor**2)
        nn.init.zeros_(m.bias)

    init_leaf(conv, average)
    return conv


#################################################################################
#                             Branch projections                                #
#################################################################################


def lora_qkv(attn, x: Tensor, lora: DomainLoRA | None, key_proj: KeyProjection) -> tuple[Tensor, Tensor, Tensor]:
    """Shared q/k/v of `attn` plus the branch's LoRA deltas, before the q/k RMSNorms. x (B, L, C) -> 3 × (B, L, H, D).

    `key_proj="q"` reproduces the released global branch, whose keys use W_q.
    """
    q = attn.q(x)
    k = q if key_proj == "q" else attn.k(x)
    v = attn.v(x)
    if lora is not None:
        q, k, v = (y + lora[n](x) if n in lora else y for n, y in (("q", q), ("k", k), ("v", v)))
    return attn.heads(attn.norm_q(q)), attn.heads(attn.norm_k(k)), attn.heads(v)


#################################################################################
#                        Spatially compressed global attention                  #
#################################################################################


class GlobalCompressedAttention(AttentionStrategy):
    """Full attention over per-frame spatially compressed tokens, upsampled back (UltraGen's global branch).

    Owns what the compressed branches share: down/up convs (`compression`), the domain-aware LoRA set (`lora`), the
    key projection and the compressed RoPE positions.
    """

    default_compression = CompressionOptions(factor=4)

    def __init__(
        self,
        dim: int,
        num_heads: int,
        layer_idx: int,
        freq_dim: int = 256,
        backend: AttentionBackend | str = "sdpa",
        *,
        compression: CompressionOptions | None = None,
        lora: LoRAOptions | None = None,
        padding: Padding | None = None,
    ):
        super().__init__(dim, num_heads, layer_idx, freq_dim, backend)
        self.compression = compression or self.default_compression
        self.padding = padding or Padding()
        self.down = down_conv(dim, self.factor)
        self.up = DepthwiseConv3d(dim, self.compression.up_init)
        lora = lora or LoRAOptions()
        self.lora = DomainLoRA(dim, lora.rank, lora.targets, lora.alpha, lora.bias, lora.init_b) if lora.rank else None

    @property
    def factor(self) -> int:
        """Spatial compression factor k."""
        return self.compression.factor

    @property
    def rope_affine(self) -> tuple[float, float]:
        """(scale, offset) of compressed positions: `grid` integers (release) or `scaled` k·i + (k−1)/2."""
        k = self.factor
        return (1.0, 0.0) if self.compression.positions == "grid" else (float(k), (k - 1) / 2)

    def plan(self, grid: VideoGrid) -> Compression:
        """This branch's compression of `grid` (raises under padding error if not divisible)."""
        return Compression.plan(grid, self.factor, self.padding.policy)

    def project(self, attn, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v of compressed tokens x (B, L, C) with this branch's LoRA."""
        return lora_qkv(attn, x, self.lora, self.compression.key_proj)

    def output_delta(self, out: Tensor) -> Tensor:
        """Per-branch `o` LoRA (applied before fusion, the shared W_o follows), if configured."""
        return out + self.lora["o"](out) if self.lora is not None and "o" in self.lora else out

    def plane_cost(self, plan: Compression, tokens: int, maps: float) -> AttentionCost:
        """Cost of attending `tokens` compressed tokens with `maps` attention-map FLOPs under `plan`: q/k/v
        projections (k reuses q's under key_proj=q), LoRA (4·tokens·D·r per target), the strided depthwise conv
        (2·k²·D per compressed token) and the depthwise Conv3d 3×3×3 (54·D per full token)."""
        d = self.dim
        projections = (4.0 if self.compression.key_proj == "q" else 6.0) * tokens * d * d
        lora = 0.0 if self.lora is None else sum(4.0 * tokens * d * m.rank for m in self.lora.values())
        convs = 2.0 * self.factor**2 * d * plan.compressed.numel + 54.0 * d * plan.grid.numel
        return AttentionCost(maps, projections + lora + convs)

    def cost(self, grid: VideoGrid) -> AttentionCost:
        plan = self.plan(grid)
        n = plan.compressed.numel
        return self.plane_cost(plan, n, 4.0 * n * n * self.dim)

    def extra_repr(self) -> str:
        lora = "none" if self.lora is None else f"rank={next(iter(self.lora.values())).rank} on {list(self.lora)}"
        c = self.compression
        return (
            f"factor={self.factor}, lora={lora}, key_proj={c.key_proj}, positions={c.positions}, "
            f"padding={self.padding.policy}, up_init={c.up_init}, {super().extra_repr()}"
        )

    def attend(self, attn, x: Tensor, ctx: AttentionContext) -> tuple[Tensor, Compression]:
        """Attention output on the compressed plane, (B, T, h', w', C), and the compression used."""
        b, _, c = x.shape
        plan = self.plan(ctx.grid)
        z = plan.compress(x.reshape(b, *ctx.grid, c), self.down)  # (B, T, h', w', C)
        q, k, v = self.project(attn, z.reshape(b, -1, c))
        scale, offset = self.rope_affine
        table = plane_rotary(self.head_dim, ctx.rope.theta, plan.compressed, scale, offset, str(x.device))
        out = self.output_delta(self.backend(apply_rope(q, table), apply_rope(k, table), v))
        return out.reshape(z.shape), plan

    def forward(self, attn, x: Tensor, ctx: AttentionContext) -> Tensor:
        z, plan = self.attend(attn, x, ctx)
        return plan.decompress(z, self.up)
