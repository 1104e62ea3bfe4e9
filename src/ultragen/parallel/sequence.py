"""Sequence parallelism for `WanDiT`: the tokens of one clip split over a process group (DeepSpeed-Ulysses style).

`apply_sequence_parallel(net, group)` changes a built network in place, from outside `models/`:
- between blocks every rank holds a contiguous 1/sp of the token sequence (padded at the end to a multiple of sp),
  so patch embedding outputs, modulation, cross-attention and FFN activations are split sp ways;
- full attention (`FullAttention`): q/k/v of the rank's tokens go all-to-all to all tokens of 1/sp of the heads,
  attend, and come back (Ulysses);
- local windows (`LocalWindowAttention`, `SwinAttention`, UltraGen's local branch): the same head split, then the
  unchanged window gather and grouped attention on each rank's heads;
- compressed branches (`GlobalCompressedAttention`, `HierarchicalAttention`, UltraGen's global and hierarchical
  branches): the tokens go all-to-all to 1/sp of the channels, the depthwise ↓ conv runs per channel, the
  compressed plane (1/k² of the tokens) is gathered, each rank attends with its heads, and the depthwise
  upsampling and Conv3d run on its channels before the tokens come back;
- the head's output is gathered, so the loss sees the whole clip on every rank of the group.

Every rank of a group must see the same clip, noise and timestep. Gradients: each rank's parameter gradients hold
the share of its tokens (or heads, or channels); their sum over the group is the one-process gradient.

Why heads, not windows, for the local branches: the window grid changes from layer to layer (4×4, then 5×5), so no
one token split owns whole windows in every layer, and 25 windows do not split evenly over 2 or 4 ranks; every
Wan preset's head count (12, 24, 40) does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ultragen.models.attention import (
    AttentionContext,
    FullAttention,
    GlobalCompressedAttention,
    HierarchicalAttention,
    LocalWindowAttention,
    UltraGenAttention,
)
from ultragen.models.attention.options import Compression
from ultragen.models.attention.window import attend_windows, plane_rotary
from ultragen.models.rope import apply_rope
from ultragen.models.wan import WanDiT

log = logging.getLogger(__name__)

SUPPORTED = (FullAttention, LocalWindowAttention, GlobalCompressedAttention, UltraGenAttention)
MAX_DIMS = 8  # of a tensor `SequenceShards.share` sends


#################################################################################
#                           Collectives with autograd                          #
#################################################################################


def _all_to_all(x: Tensor, group: dist.ProcessGroup, scatter_dim: int, gather_dim: int) -> Tensor:
    """Chunk j of x along `scatter_dim` goes to rank j; the chunks received are joined along `gather_dim`."""
    size = dist.get_world_size(group)
    send = torch.stack(x.chunk(size, scatter_dim)).contiguous()
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    return torch.cat(recv.unbind(0), dim=gather_dim)


class AllToAll(torch.autograd.Function):
    """`_all_to_all` whose backward is the reverse all-to-all."""

    @staticmethod
    def forward(ctx, x: Tensor, group: dist.ProcessGroup, scatter_dim: int, gather_dim: int) -> Tensor:
        ctx.group, ctx.dims = group, (scatter_dim, gather_dim)
        return _all_to_all(x, group, scatter_dim, gather_dim)

    @staticmethod
    def backward(ctx, grad: Tensor):
        scatter_dim, gather_dim = ctx.dims
        return _all_to_all(grad.contiguous(), ctx.group, gather_dim, scatter_dim), None, None, None


class AllGather(torch.autograd.Function):
    """Rank-ordered concatenation of every rank's x along `dim`.

    Backward keeps this rank's chunk of the gradient. With `replicated=False` the gradients of all ranks are summed
    first (each rank used the gathered tensor differently); with `True` they are equal (every rank computed the same
    loss from it) and are not summed.
    """

    @staticmethod
    def forward(ctx, x: Tensor, group: dist.ProcessGroup, dim: int, replicated: bool) -> Tensor:
        ctx.group, ctx.dim, ctx.replicated = group, dim, replicated
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=dim)

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.contiguous()
        if not ctx.replicated:
            dist.all_reduce(grad, group=ctx.group)
        rank, size = dist.get_rank(ctx.group), dist.get_world_size(ctx.group)
        return grad.chunk(size, ctx.dim)[rank].contiguous(), None, None, None


class Split(torch.autograd.Function):
    """This rank's chunk of a tensor every rank holds alike; backward places its gradient there (zeros elsewhere)."""

    @staticmethod
    def forward(ctx, x: Tensor, group: dist.ProcessGroup, dim: int) -> Tensor:
        ctx.shape, ctx.dim = x.shape, dim
        ctx.rank, ctx.size = dist.get_rank(group), dist.get_world_size(group)
        return x.chunk(ctx.size, dim)[ctx.rank].contiguous()

    @staticmethod
    def backward(ctx, grad: Tensor):
        full = grad.new_zeros(ctx.shape)
        full.narrow(ctx.dim, ctx.rank * grad.shape[ctx.dim], grad.shape[ctx.dim]).copy_(grad)
        return full, None, None


#################################################################################
#                                Token layout                                  #
#################################################################################


@dataclass
class SequenceShards:
    """One process group's split of a clip's N tokens: rank r holds tokens [r·n, (r + 1)·n) of the sequence padded
    to sp·n, n = ⌈N / sp⌉."""

    group: dist.ProcessGroup
    tokens: int = 0  # N of the clip in flight, set when the first block runs
    active: bool = True  # False: the network runs whole on each rank (`whole_sequence`)

    @property
    def size(self) -> int:
        return dist.get_world_size(self.group)

    @property
    def rank(self) -> int:
        return dist.get_rank(self.group)

    def padded(self, n: int) -> int:
        return -(-n // self.size) * self.size

    def split(self, x: Tensor) -> Tensor:
        """(B, N, ...) alike on every rank -> this rank's (B, N_padded / sp, ...)."""
        pad = self.padded(x.shape[1]) - x.shape[1]
        if pad:
            x = torch.cat([x, x[:, -1:].expand(-1, pad, *x.shape[2:])], dim=1)
        return Split.apply(x, self.group, 1)

    def gather(self, x: Tensor) -> Tensor:
        """This rank's (B, N_padded / sp, ...) -> (B, N, ...) on every rank (the loss is computed alike on all)."""
        return AllGather.apply(x, self.group, 1, True)[:, : self.tokens]

    def to_heads(self, x: Tensor, dim: int) -> Tensor:
        """(B, N_padded / sp, ..., H, ...) with heads at `dim` -> (B, N, ..., H / sp, ...): all tokens, 1/sp of the
        heads."""
        return AllToAll.apply(x, self.group, dim, 1)[:, : self.tokens]

    def to_tokens(self, x: Tensor, dim: int) -> Tensor:
        """Inverse of `to_heads`: (B, N, ..., H / sp, ...) -> (B, N_padded / sp, ..., H, ...)."""
        pad = self.padded(x.shape[1]) - x.shape[1]
        if pad:
            x = torch.cat([x, x.new_zeros(x.shape[0], pad, *x.shape[2:])], dim=1)
        return AllToAll.apply(x, self.group, 1, dim)

    @contextmanager
    def whole_sequence(self) -> Iterator[None]:
        """Run the network unsplit on this rank alone (sampling on rank 0, one prompt per rank in `predict`)."""
        active, self.active = self.active, False
        try:
            yield
        finally:
            self.active = active

    def share(self, *tensors: Tensor) -> list[Tensor]:
        """The group's first rank's `tensors` on every rank of the group (shapes may differ between ranks)."""
        src = dist.get_global_rank(self.group, 0)
        shared = []
        for t in tensors:
            shape = torch.zeros(MAX_DIMS + 1, dtype=torch.int64)
            shape[0], shape[1 : t.ndim + 1] = t.ndim, torch.tensor(t.shape)
            dist.broadcast(shape, src, group=self.group)
            out = t.contiguous() if self.rank == 0 else t.new_empty(shape[1 : int(shape[0]) + 1].tolist())
            dist.broadcast(out, src, group=self.group)
            shared.append(out)
        return shared

    def heads(self, num_heads: int) -> slice:
        """The heads this rank attends with."""
        n = num_heads // self.size
        return slice(self.rank * n, (self.rank + 1) * n)

    def channels(self, dim: int) -> slice:
        """The channels this rank holds in channel-split layouts (its heads' channels)."""
        n = dim // self.size
        return slice(self.rank * n, (self.rank + 1) * n)


#################################################################################
#                     Strategies over a split sequence                          #
#################################################################################


def full_forward(strategy: FullAttention, shards: SequenceShards, attn, x: Tensor, ctx: AttentionContext) -> Tensor:
    """Ulysses: q/k/v of this rank's tokens -> all tokens of its heads -> attention -> back. (B, n, C) -> (B, n, C)."""
    q, k, v = shards.to_heads(torch.stack(attn.qkv(x), dim=2), dim=3).unbind(2)  # (B, N, H/sp, D) each
    rope = ctx.grid_rope(x.device)
    out = strategy.backend(apply_rope(q, rope), apply_rope(k, rope), v)  # (B, N, H/sp·D)
    return shards.to_tokens(out.unflatten(-1, (-1, strategy.head_dim)), dim=2).flatten(2)


def windows_forward(
    strategy: LocalWindowAttention, shards: SequenceShards, attn, x: Tensor, ctx: AttentionContext
) -> Tensor:
    """Head-split q/k/v of all tokens, then the strategy's own window gather and grouped attention."""
    fit = strategy.fit(ctx.grid)
    if fit.resamples:
        raise ValueError(
            f"padding policy interpolate resizes the {ctx.grid} token grid before the q/k norms, which sequence "
            "parallelism cannot split; use padding: {policy: replicate} (or a grid the windows divide) with "
            "sp_degree > 1"
        )
    qkv = shards.to_heads(torch.stack(attn.qkv(x), dim=2), dim=3)  # (B, N, 3, H/sp, D)
    b, _, _, h, d = qkv.shape
    out = attend_windows(
        qkv.reshape(b, *ctx.grid, 3 * h * d), lambda tokens: tokens.unflatten(-1, (3, h, d)).unbind(2), fit,
        strategy.window_grid, ctx.rope, strategy.windows.rope, strategy.backend, strategy.shifted,
    )  # (B, N, H/sp·D)
    return shards.to_tokens(out.unflatten(-1, (h, d)), dim=2).flatten(2)


def compressed_plane(
    branch: GlobalCompressedAttention, shards: SequenceShards, attn, x: Tensor, ctx: AttentionContext
) -> tuple[Tensor, Compression, slice]:
    """This rank's channels of `branch.attend`'s compressed-plane output, (B, T, h', w', C/sp), its compression,
    and the channels. x (B, n, C) is this rank's tokens."""
    b, c = x.shape[0], branch.dim
    channels = shards.channels(c)
    heads = shards.heads(branch.num_heads)
    plan = branch.plan(ctx.grid)
    share = shards.to_heads(x, dim=2).reshape(b, *ctx.grid, -1)  # (B, T, H, W, C/sp): all tokens, own channels
    down = partial(F.conv2d, weight=branch.down.weight[channels], bias=branch.down.bias[channels],
                   stride=branch.factor, groups=share.shape[-1])
    z = AllGather.apply(plan.compress(share, down), shards.group, 4, False)  # (B, T, h', w', C): the whole plane

    def project(tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return tuple(t[:, :, heads] for t in branch.project(attn, tokens))

    scale, offset = branch.rope_affine
    if isinstance(branch, HierarchicalAttention):
        fit = branch.fit(ctx.grid)[1]
        out = attend_windows(
            z, project, fit, branch.window_grid, ctx.rope, branch.windows.rope, branch.backend,
            rope_scale=scale, rope_offset=offset,
        )  # (B, N', C/sp) on fit.source
        plane = fit.source
    else:
        q, k, v = project(z.reshape(b, -1, c))
        table = plane_rotary(branch.head_dim, ctx.rope.theta, plan.compressed, scale, offset, str(x.device))
        out, plane = branch.backend(apply_rope(q, table), apply_rope(k, table), v), plan.compressed
    if branch.lora is not None and "o" in branch.lora:  # the o LoRA mixes channels: apply it to the whole output
        out = branch.output_delta(AllGather.apply(out, shards.group, 2, False))[..., channels]
    return out.reshape(b, *plane, -1), plan, channels


def compressed_forward(
    branch: GlobalCompressedAttention,
    shards: SequenceShards,
    attn,
    x: Tensor,
    ctx: AttentionContext,
    scale: Tensor | None = None,
) -> Tensor:
    """A compressed branch on this rank's tokens x (B, n, C) -> (B, n, C), times `scale` (B, C) if given."""
    plane, plan, channels = compressed_plane(branch, shards, attn, x, ctx)
    out = plan.decompress(plane, branch.up, None if scale is None else scale[:, channels], channels)  # (B, N, C/sp)
    return shards.to_tokens(out, dim=2)


def ultragen_forward(
    strategy: UltraGenAttention, shards: SequenceShards, attn, x: Tensor, ctx: AttentionContext
) -> Tensor:
    """`UltraGenAttention.forward` with each branch split as above; the gates are per clip, alike on every rank."""
    return strategy.fuse(
        ctx, x.dtype, lambda branch: windows_forward(branch, shards, attn, x, ctx),
        lambda branch, weight: compressed_forward(branch, shards, attn, x, ctx, weight),
    )


def split_forward(strategy: nn.Module) -> Callable[..., Tensor]:
    """The function (strategy, shards, attn, x, ctx) -> out that runs `strategy` over a split sequence; raises for
    strategies without one."""
    if isinstance(strategy, UltraGenAttention):
        return ultragen_forward
    if isinstance(strategy, GlobalCompressedAttention):  # hierarchical included
        return compressed_forward
    if isinstance(strategy, LocalWindowAttention):  # Swin included
        return windows_forward
    if type(strategy) is FullAttention:
        return full_forward
    raise ValueError(
        f"sequence parallelism has no split forward for {type(strategy).__name__}; it supports "
        f"{[c.__name__ for c in SUPPORTED]} (and their subclasses SwinAttention, HierarchicalAttention): "
        "use one of them or sp_degree: 1"
    )


#################################################################################
#                                 Applying it                                   #
#################################################################################


def check_sequence_parallel(net: WanDiT, sp_degree: int) -> None:
    """Raise naming the value and the fix if `net` cannot be split over `sp_degree` ranks."""
    if sp_degree < 1:
        raise ValueError(f"sp_degree={sp_degree} must be >= 1")
    if net.num_heads % sp_degree:
        divisors = [d for d in range(1, net.num_heads + 1) if net.num_heads % d == 0]
        raise ValueError(
            f"sp_degree={sp_degree} does not divide num_heads={net.num_heads}: each rank attends with whole heads; "
            f"choose sp_degree from {divisors}"
        )
    if sp_degree > 1:
        for block in net.blocks:
            split_forward(block.self_attn.strategy)  # raises for strategies without a split forward


def sequence_parallel(net: WanDiT, sp_degree: int) -> SequenceShards:
    """Split `net` over groups of `sp_degree` consecutive ranks of the initialised default process group (every
    rank calls this); the world is sp_degree × data-parallel ranks."""
    if not dist.is_initialized():
        raise ValueError(f"sp_degree={sp_degree} needs a distributed run; launch with trainer.devices >= {sp_degree}")
    world, rank = dist.get_world_size(), dist.get_rank()
    if world % sp_degree:
        raise ValueError(
            f"sp_degree={sp_degree} does not divide the world size {world}; use devices × num_nodes that is a "
            f"multiple of {sp_degree}"
        )
    check_sequence_parallel(net, sp_degree)
    groups = [dist.new_group(list(range(s, s + sp_degree))) for s in range(0, world, sp_degree)]  # all ranks make all
    return apply_sequence_parallel(net, groups[rank // sp_degree])


def apply_sequence_parallel(net: WanDiT, group: dist.ProcessGroup) -> SequenceShards:
    """Split `net`'s token sequence over `group` (every rank of it must call this, and run the same clips)."""
    shards = SequenceShards(group)
    check_sequence_parallel(net, shards.size)

    def split_tokens(module, args):  # the first block: the tokens enter split
        if shards.active:
            x, t_mod, context, ctx = args
            shards.tokens = x.shape[1]
            return shards.split(x), t_mod, context, ctx

    def split_modulation(module, args):  # every block: per-token modulation (B, N, 6, C) split like the tokens
        x, t_mod, context, ctx = args
        if shards.active and t_mod.shape[1] > 1:
            return x, shards.split(t_mod), context, ctx

    def split_head_input(module, args):
        x, t_emb = args
        if shards.active and t_emb.shape[1] > 1:
            return x, shards.split(t_emb)

    def gather_output(module, args, out):
        if shards.active:
            return shards.gather(out)

    net.blocks[0].register_forward_pre_hook(split_tokens)
    for block in net.blocks:
        block.register_forward_pre_hook(split_modulation)
    net.head.register_forward_pre_hook(split_head_input)
    net.head.register_forward_hook(gather_output)
    def dispatch(split: Callable[..., Tensor], whole: Callable[..., Tensor]) -> Callable[..., Tensor]:
        def forward(attn, x: Tensor, ctx: AttentionContext) -> Tensor:
            return (split if shards.active else whole)(attn, x, ctx)

        return forward

    for block in net.blocks:
        strategy = block.self_attn.strategy
        strategy.forward = dispatch(partial(split_forward(strategy), strategy, shards), strategy.forward)
    log.info("sequence parallel: %d ranks per clip, %d heads each", shards.size, net.num_heads // shards.size)
    return shards
