"""Per-GPU training memory of a configured WanDiT, and the `ultragen memory` subcommand. Estimates, not measurements.

Parameters, gradients and AdamW states come from the exact parameter count of the DiT built on the meta device
(attention-strategy weights and peft LoRA included; `model.trainable` all | strategy | lora decides which
parameters get gradients and optimizer states). Bytes per parameter:

    precision    weights (all params)   gradients (trainable)   optimizer (trainable)
    bf16-mixed   2 (bf16)               2 (bf16)                12 (fp32 master + 2 fp32 moments)
    32-true      4                      4                        8 (2 fp32 moments)

This is DeepSpeed's bf16 layout (ZeRO paper: 2 + 2 + 12 B). Lightning's `bf16-mixed` under DDP and FSDP2 autocasts
fp32 weights instead (4 + 4 + 8 B): the same 16 B per trainable parameter, but frozen weights take 4 B, not 2.

Sharding over the world size W: ZeRO-1 divides optimizer states, ZeRO-2 also gradients, ZeRO-3 and FSDP2 (full
shard) also weights; offload moves optimizer states (ZeRO-3: weights too) to CPU memory, gradients stay on the GPU.

Activations count the tensors autograd keeps for backward, per DiT block (see `block_saved`), in the activation
dtype (bf16 / fp32) except those the block computes in fp32 on purpose. Flash / memory-efficient SDPA kernels keep
no N×N attention maps, only q, k, v, the output and a log-sum-exp per head and token. `model.activation_checkpointing`
(none | blocks | n: every n-th block, as VideoDiffusionModule) keeps only a checkpointed block's input, plus one
block's activations while it is recomputed. `--sp-degree S` gives each rank N/S tokens; the gathered compressed
plane of the global branch stays whole on every rank. Not modelled: the frozen text encoder and VAE (the recipe
precomputes latents and text states), communication buckets, ZeRO-3/FSDP2 gathered layers, gradients of
activations during backward, loss terms, the CUDA context and allocator fragmentation.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import nn

from jsonargparse import Namespace

from ultragen.cost import add_config_arguments, config_paths, parse_configs, text_length
from ultragen.lit.config import build_network
from ultragen.lit.recipe import DEFAULT_LORA_TARGETS, TRAINABLE, checkpoint_interval, select_trainable
from ultragen.models.attention.base import AttentionStrategy, VideoGrid
from ultragen.models.attention.full import FullAttention
from ultragen.models.attention.global_compressed import GlobalCompressedAttention
from ultragen.models.attention.global_local import UltraGenAttention
from ultragen.models.attention.hierarchical import HierarchicalAttention
from ultragen.models.attention.multiscale import MultiScaleWindowAttention
from ultragen.models.attention.window import LocalWindowAttention, window_layout

MiB, GiB = 2**20, 2**30


#################################################################################
#                         Precision and sharding layouts                        #
#################################################################################


@dataclass(frozen=True)
class Precision:
    """Bytes per weight (every parameter), gradient and optimizer state (trainable ones), and per activation."""

    weight: int
    grad: int
    optimizer: int
    activation: int


PRECISIONS: dict[str, Precision] = {
    "bf16-mixed": Precision(weight=2, grad=2, optimizer=12, activation=2),
    "32-true": Precision(weight=4, grad=4, optimizer=8, activation=4),
}


@dataclass(frozen=True)
class Sharding:
    """Which training states a strategy divides by the world size and which it keeps in CPU memory."""

    name: str
    weights: bool = False
    grads: bool = False
    optimizer: bool = False
    offload_optimizer: bool = False
    offload_weights: bool = False


SHARDINGS: tuple[Sharding, ...] = (
    Sharding("DDP"),
    Sharding("ZeRO-1", optimizer=True),
    Sharding("ZeRO-2", grads=True, optimizer=True),
    Sharding("ZeRO-2+offload", grads=True, optimizer=True, offload_optimizer=True),
    Sharding("ZeRO-3", weights=True, grads=True, optimizer=True),
    Sharding("ZeRO-3+offload", weights=True, grads=True, optimizer=True, offload_optimizer=True, offload_weights=True),
    Sharding("FSDP2", weights=True, grads=True, optimizer=True),
)


@dataclass(frozen=True)
class StateMemory:
    """Bytes per rank of weights, gradients and optimizer states on the GPU, and what offload puts in CPU memory."""

    weights: float
    grads: float
    optimizer: float
    cpu: float

    @property
    def gpu(self) -> float:
        return self.weights + self.grads + self.optimizer


def state_memory(total: int, trainable: int, precision: Precision, sharding: Sharding, world_size: int) -> StateMemory:
    """Per-rank weights (all `total` parameters), gradients and optimizer states (`trainable` ones) of a strategy."""
    weights = total * precision.weight / (world_size if sharding.weights else 1)
    grads = trainable * precision.grad / (world_size if sharding.grads else 1)
    optimizer = trainable * precision.optimizer / (world_size if sharding.optimizer else 1)
    cpu = optimizer * sharding.offload_optimizer + weights * sharding.offload_weights
    return StateMemory(
        weights=0.0 if sharding.offload_weights else weights,
        grads=grads,
        optimizer=0.0 if sharding.offload_optimizer else optimizer,
        cpu=cpu,
    )


#################################################################################
#                               Building the DiT                                #
#################################################################################


def build_net(config: Namespace, in_dim: int, text_dim: int, trainable: str | None = None) -> nn.Module:
    """The configured DiT on the meta device, with VideoDiffusionModule's trainable selection applied (`trainable`,
    else the config's `model.trainable`, with its `lora_*` settings).

    all: every weight; strategy: `*.strategy.*`; lora: peft LoRA adapters on `lora_targets`, only `lora_*` trainable.
    """
    model = config.model
    with torch.device("meta"):
        net = build_network(config, in_dim, text_dim)
        return select_trainable(net, trainable or model.trainable, model.lora_rank, model.lora_alpha,
                                model.lora_targets or DEFAULT_LORA_TARGETS)


#################################################################################
#                                 Activations                                   #
#################################################################################


@dataclass(frozen=True)
class Saved:
    """Elements kept for backward: `act` in the activation dtype, `fp32` always in float32."""

    act: float = 0.0
    fp32: float = 0.0

    def __add__(self, other: "Saved") -> "Saved":
        return Saved(self.act + other.act, self.fp32 + other.fp32)

    def bytes(self, precision: Precision) -> float:
        return self.act * precision.activation + self.fp32 * 4


def attend(tokens: float, dim: int, heads: int, shared_k: bool = False) -> Saved:
    """One attention call over `tokens` queries and keys: q/k RMSNorm inputs (the fused GPU kernel keeps its input),
    rotated q and k, v and the output (kept by SDPA; the output is W_o's or the next op's input), one rstd per
    RMSNorm and a log-sum-exp per head. `shared_k`: keys come from the query projection (the release's global keys)."""
    return Saved(act=(5 if shared_k else 6) * tokens * dim, fp32=(2 + heads) * tokens)


def local_saved(strategy: LocalWindowAttention, grid: VideoGrid, sp: int) -> tuple[Saved, bool]:
    """Window attention on the (padded or resized) working grid, including its output on `grid`, and whether it
    keeps the block's modulated input itself.

    Windows gathered out of token order (or resized) are copies kept by q/k/v; so is the output scattered back
    (kept by the next op). Under sequence parallelism each rank attends all windows with 1/sp of the heads.
    """
    d, fit = strategy.dim, strategy.fit(grid)
    moved = fit.resamples or not window_layout(fit, (1, *strategy.window_grid), False, strategy.shifted).identity
    work, n = fit.work.numel / sp, grid.numel / sp
    return attend(work, d, strategy.num_heads) + Saved(act=(work + n) * d if moved else 0.0), not moved


def compressed_saved(
    strategy: GlobalCompressedAttention, grid: VideoGrid, sp: int, scaled: bool
) -> tuple[Saved, bool]:
    """Compressed branch: padded input of the strided conv, compressed (windowed) tokens with their LoRA ranks,
    attention, and the full-size upsampled plane kept by the depthwise Conv3d; and whether the conv keeps the
    block's modulated input itself (no padding copy).

    `scaled` (inside UltraGenAttention): the gate weight multiplies the plane, which keeps it. The global branch
    (not hierarchical) keeps its whole compressed plane on every sequence-parallel rank; the hierarchical one is
    counted split over the ranks, although `ultragen.parallel.sequence` gathers its plane too (an underestimate).
    """
    d, k = strategy.dim, strategy.factor
    if isinstance(strategy, HierarchicalAttention):
        plan, fit = strategy.fit(grid)
        identity = window_layout(fit, (1, *strategy.window_grid)).identity
        tokens, plane = fit.work.numel / sp, fit.source.numel / sp
        out_copy = plane * d if scaled and not identity else 0.0
        source = fit.source
    else:
        plan = strategy.plan(grid)
        tokens, out_copy, source = float(plan.compressed.numel), 0.0, plan.compressed
    saved = attend(tokens, d, strategy.num_heads, shared_k=strategy.compression.key_proj == "q")
    replicate = strategy.padding.policy == "replicate"
    pad = plan.padded.numel if replicate and plan.padded != grid else 0
    up = source.t * source.h * k * source.w * k if replicate else grid.numel
    lora = strategy.lora or {}
    act = tokens * d  # the compressed tokens: input of q/k/v and of the LoRAs
    act += sum(lora[t].rank for t in lora) * tokens  # LoRA A outputs
    act += tokens * d if "o" in lora else 0.0  # attention output + o-LoRA delta
    act += out_copy + (pad + (up if k > 1 else 0)) / sp * d
    return saved + Saved(act=act), pad == 0


def attention_saved(strategy: AttentionStrategy, grid: VideoGrid, sp: int = 1) -> Saved:
    """Elements one self-attention strategy keeps for backward per sample and rank: its input (the modulated block
    input) where an op keeps it, everything up to W_o, and W_o's input."""
    d, heads, n = strategy.dim, strategy.num_heads, grid.numel / sp
    if isinstance(strategy, UltraGenAttention):
        parts = [] if strategy.local_branch is None else [local_saved(strategy.local_branch, grid, sp)]
        parts += [compressed_saved(b, grid, sp, scaled=True) for b in (strategy.hier_branch, strategy.global_branch)
                  if b is not None]
        keeps_input = any(keeps for _, keeps in parts)
        return sum((s for s, _ in parts), Saved(act=n * d * (1 + keeps_input)))  # + the fused output, W_o's input
    if isinstance(strategy, FullAttention):
        return attend(n, d, heads) + Saved(act=n * d)
    if isinstance(strategy, LocalWindowAttention):
        saved, keeps_input = local_saved(strategy, grid, sp)
        return saved + Saved(act=n * d * keeps_input)
    if isinstance(strategy, MultiScaleWindowAttention):
        fit = strategy.check(grid)
        identity = [window_layout(fit, strategy.counts, strided).identity for strided in (False, True)]
        # input, q/k RMSNorm inputs, W_o's input (the mean); rotated q, k, v where a call reads them in token
        # order; each call's output and the q, k, v it gathers into windows
        act = 4 + 3 * any(identity) + sum(1 + 3 * (not i) for i in identity)
        return Saved(act=act * n * d, fp32=(2 + 2 * heads) * n)
    if isinstance(strategy, GlobalCompressedAttention):
        saved, keeps_input = compressed_saved(strategy, grid, sp, scaled=False)
        return saved + Saved(act=n * d * (1 + keeps_input))  # + the decompressed output, W_o's input
    raise ValueError(
        f"ultragen memory has no activation model for {type(strategy).__name__} yet (weights, gradients and optimizer "
        "states are exact for it); estimate with a modelled strategy or add one to ultragen.memory.attention_saved"
    )


def block_saved(strategy: AttentionStrategy, ffn_dim: int, text_len: int, grid: VideoGrid, sp: int = 1) -> Saved:
    """Elements a DiT block keeps for backward per sample and rank (DiTBlock in bf16 weights, no autocast).

    Activation dtype: the input x, x after self- and cross-attention, the norm3 output, cross-attention q (RMSNorm
    input and normed) and output, the modulated FFN input, the FFN hidden before and after GELU (ffn_dim wide);
    text k (RMSNorm input), k and v. Float32 (`.float()` in DiTBlock): norm1 and norm2 outputs, the self-attention
    and FFN outputs before their gates; LayerNorm mean/rstd, RMSNorm rstd and log-sum-exp of cross-attention.
    Plus `attention_saved` of the strategy. Within 1% of what torch saves on CPU with the fused RMSNorm of GPUs
    (tests/test_memory.py).
    """
    d, heads, n = strategy.dim, strategy.num_heads, grid.numel / sp
    common = Saved(
        act=8 * n * d + 2 * n * ffn_dim + 3 * text_len * d,
        fp32=4 * n * d + 6 * n + n + text_len + heads * n,
    )
    return common + attention_saved(strategy, grid, sp)


def outside_blocks_saved(net: nn.Module, text_len: int, grid: VideoGrid, sp: int = 1) -> Saved:
    """Patch-embedding input, the text embedding MLP (input, hidden, GELU output, shared context) and the head
    (input, fp32 norm output, modulated input, LayerNorm stats)."""
    d, n = net.dim, grid.numel / sp
    patch = net.in_dim * n * math.prod(net.patch_size)
    return Saved(act=patch + text_len * (net.text_dim + 3 * d) + 2 * n * d, fp32=n * d + 2 * n)


@dataclass(frozen=True)
class Activations:
    """Per-rank activation bytes of the whole DiT for a checkpointing interval (0 = none)."""

    every: int
    kept: float  # non-checkpointed blocks, checkpointed blocks' inputs, outside the blocks
    recompute: float  # one checkpointed block's activations besides its input, while recomputed

    @property
    def total(self) -> float:
        return self.kept + self.recompute


def checkpointed(blocks: Sequence[float], block_input: float, outside: float, every: int) -> Activations:
    """Whole-model activation bytes from per-block bytes, with blocks 0, n, 2n, ... checkpointed (n = `every`)."""
    chosen = set(range(0, len(blocks), every)) if every else set()
    kept = outside + sum(block_input if i in chosen else b for i, b in enumerate(blocks))
    recompute = max((blocks[i] - block_input for i in chosen), default=0.0)
    return Activations(every, kept, recompute)


#################################################################################
#                                   Subcommand                                  #
#################################################################################


@dataclass(frozen=True)
class Estimate:
    """Everything the report prints: parameter counts, per-block activation bytes and the settings used."""

    net: nn.Module
    grid: VideoGrid
    precision: str
    world_size: int
    sp: int
    batch: int
    text_len: int
    trainable: str
    every: int

    @cached_property
    def total_params(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    @cached_property
    def trainable_params(self) -> int:
        return sum(p.numel() for p in self.net.parameters() if p.requires_grad)

    @cached_property
    def block_bytes(self) -> list[float]:
        """Activation bytes of each block for the batch on one rank."""
        p, ffn = PRECISIONS[self.precision], self.net.blocks[0].ffn[0].out_features
        return [
            block_saved(b.self_attn.strategy, ffn, self.text_len, self.grid, self.sp).bytes(p) * self.batch
            for b in self.net.blocks
        ]

    def activations(self, every: int) -> Activations:
        p = PRECISIONS[self.precision]
        block_input = self.grid.numel / self.sp * self.net.dim * p.activation * self.batch
        outside = outside_blocks_saved(self.net, self.text_len, self.grid, self.sp).bytes(p) * self.batch
        return checkpointed(self.block_bytes, block_input, outside, every)

    def states(self, sharding: Sharding) -> StateMemory:
        return state_memory(
            self.total_params, self.trainable_params, PRECISIONS[self.precision], sharding, self.world_size
        )


def setting_name(every: int) -> str:
    """`activation_checkpointing` of a block interval."""
    return {0: "none", 1: "blocks"}.get(every, f"every {every}")


def report(estimate: Estimate, gpu_gib: float) -> str:
    """Parameter counts, activations per checkpointing setting, the per-strategy table and the assumptions."""
    e, net = estimate, estimate.net
    strategies = [b.self_attn.strategy for b in net.blocks]
    kinds: dict[str, list[float]] = {}  # strategy description -> activation bytes of its blocks
    for s, b in zip(strategies, e.block_bytes):
        kinds.setdefault(s.describe(), []).append(b)
    p = PRECISIONS[e.precision]
    act = e.activations(e.every).total
    states = {sharding.name: e.states(sharding) for sharding in SHARDINGS}
    unit, name = (GiB, "GiB") if max(m.gpu for m in states.values()) + act >= GiB else (MiB, "MiB")
    lines = [
        f"DiT: dim {net.dim}, {len(strategies)} blocks ({', '.join(f'{len(b)}x {k}' for k, b in kinds.items())}), "
        f"in_dim {net.in_dim}, text_dim {net.text_dim}",
        f"parameters {e.total_params:,}, trainable ({e.trainable}) {e.trainable_params:,}; {e.precision}: "
        f"{p.weight} B per weight, {p.grad} + {p.optimizer} B gradient + AdamW per trainable parameter",
        f"grid {e.grid} (N = {e.grid.numel:,}), batch {e.batch} per GPU, text length {e.text_len}, "
        f"sp-degree {e.sp} ({e.grid.numel / e.sp:,.0f} tokens per rank), world size {e.world_size}",
        "",
        f"activations per GPU in {name} (flash/SDPA kernels: no attention maps stored)",
        "  one block: " + ", ".join(f"{k} {b[0] / unit:,.2f}" for k, b in kinds.items()),
    ]
    for every in sorted({0, 1, e.every}):
        a = e.activations(every)
        lines.append(
            f"  checkpointing {setting_name(every):<9} {a.total / unit:>9,.2f}"
            + (f"  (kept {a.kept / unit:,.2f} + one block recomputed {a.recompute / unit:,.2f})" if every else "")
            + ("  <- table" if every == e.every else "")
        )
    fits = f"<= {gpu_gib:g} GiB"
    lines += [
        "",
        f"per GPU in {name}, activations with checkpointing {setting_name(e.every)}",
        f"{'strategy':<16}{'weights':>9}{'grads':>9}{'AdamW':>9}{'activ.':>9}{'GPU total':>11}{'CPU':>9}{fits:>11}",
    ]
    for sharding_name, m in states.items():
        total = m.gpu + act
        lines.append(
            f"{sharding_name:<16}{m.weights / unit:>9,.2f}{m.grads / unit:>9,.2f}{m.optimizer / unit:>9,.2f}"
            f"{act / unit:>9,.2f}{total / unit:>11,.2f}{m.cpu / unit:>9,.2f}"
            f"{'yes' if total <= gpu_gib * GiB else 'no':>11}"
        )
    lines += [
        "",
        "Estimates, not measurements (details: ultragen.memory). AdamW; ZeRO/FSDP2 shard over all ranks; offload",
        "keeps gradients on the GPU. Lightning's bf16-mixed under DDP/FSDP2 keeps fp32 weights (4 + 4 + 8 B: the",
        "same per trainable parameter, 4 B per frozen one). Frozen text encoder and VAE excluded (precomputed latents",
        "and text). Not modelled: communication buckets, ZeRO-3/FSDP2 gathered layers, activation gradients during",
        "backward, CUDA context, fragmentation: leave 10-20% headroom.",
    ]
    return "\n".join(lines)


def positive(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def grid_arg(text: str) -> VideoGrid:
    """argparse type: a token grid TxHxW with positive sides."""
    try:
        grid = VideoGrid.parse(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if min(grid) < 1:
        raise argparse.ArgumentTypeError(f"grid {text!r} has an empty axis; every side must be >= 1")
    return grid


def main(argv: list[str]) -> str:
    """`ultragen memory -c config.yaml [-c ...] --grid TxHxW --world-size N`: per-GPU training memory estimate."""
    parser = argparse.ArgumentParser(prog="ultragen memory", description=main.__doc__)
    add_config_arguments(parser)
    parser.add_argument("--grid", required=True, type=grid_arg, help="token grid TxHxW, e.g. 21x68x120")
    parser.add_argument("--world-size", required=True, type=positive, help="number of GPUs (ranks)")
    parser.add_argument("--sp-degree", type=positive, default=1, help="sequence-parallel ranks per clip (default 1)")
    parser.add_argument("--batch-size", type=positive, default=1, help="clips per GPU per step (default 1)")
    parser.add_argument(
        "--precision", choices=sorted(PRECISIONS),
        help="default: the config's trainer.precision, else bf16-mixed",
    )
    parser.add_argument("--trainable", choices=TRAINABLE, help="default: the config's model.trainable, else all")
    parser.add_argument(
        "--activation-checkpointing",
        help="none | blocks | n (default: the config's model.activation_checkpointing, else none)",
    )
    parser.add_argument("--in-dim", type=positive, default=16, help="latent channels (default 16, Wan-VAE)")
    parser.add_argument("--text-dim", type=positive, default=4096, help="text-state width (default 4096, umT5-XXL)")
    parser.add_argument(
        "--text-len", type=positive, help="text tokens (default: the text encoder's max_length or 512)"
    )
    parser.add_argument("--gpu-gib", type=float, default=80.0, help="GPU memory in GiB for the last column (default 80)")
    args = parser.parse_args(argv)
    config = parse_configs(parser, config_paths(parser, args.model, args.config))
    precision = args.precision or config.trainer.precision or "bf16-mixed"
    if precision not in PRECISIONS:
        parser.error(f"precision {precision!r} is not modelled; pass --precision {' or '.join(PRECISIONS)}")
    heads = config.model.net.init_args.num_heads
    if heads % args.sp_degree:
        parser.error(f"--sp-degree {args.sp_degree} does not divide num_heads={heads} (Ulysses splits heads)")
    if args.world_size % args.sp_degree:
        parser.error(f"--world-size {args.world_size} is not a multiple of --sp-degree {args.sp_degree}")
    trainable = args.trainable or config.model.trainable
    try:
        setting = args.activation_checkpointing or config.model.activation_checkpointing
        every = checkpoint_interval(int(setting) if str(setting).isdigit() else setting)
        estimate = Estimate(
            build_net(config, args.in_dim, args.text_dim, trainable), args.grid, precision, args.world_size,
            args.sp_degree, args.batch_size, text_length(config, args.text_len), trainable, every,
        )
        return report(estimate, args.gpu_gib)
    except ValueError as err:
        parser.error(" ".join(str(err).split()))
