"""Time forward+backward of one self-attention layer per strategy against FullAttention on the same grid.

Prints, per strategy: measured time ratio vs full, the analytic FLOP ratio from the cost model
(`AttentionStrategy.cost` + W_o, `ultragen.cost`, total incl. projections/convs/LoRA), and their quotient.

    python benchmarks/attention.py                                   # 5x32x64 grid, 12 heads x 128, CPU
    python benchmarks/attention.py --grid 21x68x120 --device cuda --dtype bfloat16
    python benchmarks/attention.py --only ultragen --profile          # where the time goes
"""

from __future__ import annotations

import argparse
from functools import partial

import torch

from ultragen.bench import attention_inputs, profile_table, time_layers
from ultragen.cost import layer_cost
from ultragen.models.attention import (
    AdaptiveBlockAttention,
    CompressionOptions,
    FullAttention,
    Padding,
    SlidingTileAttention,
    TopKBlockAttention,
    VideoGrid,
    WindowOptions,
)
from ultragen.models.attention.global_compressed import GlobalCompressedAttention
from ultragen.models.attention.global_local import UltraGenAttention
from ultragen.models.attention.hierarchical import HierarchicalAttention
from ultragen.models.attention.multiscale import MultiScaleWindowAttention
from ultragen.models.attention.window import LocalWindowAttention, SwinAttention
from ultragen.models.blocks import SelfAttention


def strategies(args: argparse.Namespace) -> dict:
    """Name -> factory (dim, heads, layer[, freq_dim, backend]) of every benchmarked strategy (`args` of
    `add_strategy_arguments`)."""
    padding = Padding(args.pad)
    blocks = padding.without_resizing("3D blocks")  # the block-sparse strategies pad whole blocks or raise
    local, hier = WindowOptions(counts=args.local_windows), WindowOptions(counts=args.hier_windows)
    compression = CompressionOptions(factor=args.global_factor)
    return {
        "full": FullAttention,
        "local": partial(LocalWindowAttention, windows=local, padding=padding),
        "swin": partial(SwinAttention, windows=WindowOptions(counts=args.local_windows[:1], shifts=[True]),
                        padding=padding),
        "global": partial(GlobalCompressedAttention, compression=compression, padding=padding),
        "hierarchical": partial(HierarchicalAttention, windows=hier, padding=padding),
        "ultragen": partial(UltraGenAttention, local_windows=local, hier_windows=hier, global_compression=compression,
                            padding=padding),
        "t3": partial(MultiScaleWindowAttention, windows=WindowOptions(counts=args.t3_windows)),
        "sta": partial(SlidingTileAttention, tile=args.sta_tile, window=args.sta_window, padding=blocks),
        "topk": partial(TopKBlockAttention, cube=args.topk_cube, k=args.topk_k, padding=blocks),
        "nabla": partial(AdaptiveBlockAttention, block=args.sta_tile, threshold=[args.nabla_threshold],
                         sliding_window=args.sta_window, padding=blocks),
    }


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Device, precision, threads and repeats, shared with `benchmarks/dit_step.py`."""
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)


def add_strategy_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of every benchmarked strategy, shared with `benchmarks/dit_step.py`."""
    parser.add_argument("--pad", default="error", choices=["error", "replicate", "interpolate"])
    parser.add_argument("--local-windows", type=counts, default=[[4, 4], [5, 5]])
    parser.add_argument("--hier-windows", type=counts, default=[[2, 2], [3, 3]])
    parser.add_argument("--global-factor", type=int, default=4)
    parser.add_argument("--t3-windows", type=counts, default=[[1, 4, 8]])
    parser.add_argument("--sta-tile", type=counts, default=[[1, 8, 16]], help="STA tile, also NABLA's block (tokens)")
    parser.add_argument("--sta-window", type=counts, default=[[3, 3, 3]], help="STA window, NABLA's sliding window")
    parser.add_argument("--nabla-threshold", type=float, default=0.9)
    parser.add_argument("--topk-cube", type=counts, default=[[1, 8, 8]])
    parser.add_argument("--topk-k", type=lambda s: [int(n) for n in s.split(",")], default=[8])
    parser.add_argument("--backend", default="sdpa", help="attention backend of every strategy (flex: FlexAttention)")
    parser.add_argument("--only", help="comma-separated strategies to run besides full")


def counts(text: str) -> list[list[int]]:
    """'4x4,5x5' -> [[4, 4], [5, 5]]."""
    return [[int(n) for n in part.split("x")] for part in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", type=VideoGrid.parse, default=VideoGrid(5, 32, 64))
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--layer", type=int, default=0, help="layer index (selects the window grid of each cycle)")
    add_run_arguments(parser)
    add_strategy_arguments(parser)
    parser.add_argument("--profile", action="store_true", help="print a profiler table per strategy")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    dim, grid = args.heads * args.head_dim, args.grid
    x, ctx = attention_inputs(grid, dim, args.heads, args.batch, device=device, dtype=dtype)
    factories = strategies(args)
    names = ["full"] + [n for n in (args.only.split(",") if args.only else factories) if n != "full"]
    print(
        f"grid {grid} (N = {grid.numel:,}), batch {args.batch}, {args.heads} heads x {args.head_dim}, "
        f"layer {args.layer}, {device} {args.dtype}, {torch.get_num_threads()} threads, "
        f"{args.warmup} warm-up + {args.repeats} interleaved repeats (best)"
    )
    header = ("strategy", "best fwd+bwd s", "measured x", "analytic x", "maps x", "meas/anal")
    print(f"{header[0]:<14} {header[1]:>14} {header[2]:>11} {header[3]:>11} {header[4]:>8} {header[5]:>10}")
    layers = {
        n: SelfAttention(dim, args.heads, factories[n](dim, args.heads, args.layer, backend=args.backend)).to(device, dtype)
        for n in names
    }
    best = time_layers(layers, x, ctx, args.repeats, args.warmup)
    full_time, full_cost = best["full"], layer_cost(layers["full"].strategy, grid)
    for name, layer in layers.items():
        seconds, cost = best[name], layer_cost(layer.strategy, grid)
        measured, analytic = full_time / seconds, full_cost.total / cost.total
        print(
            f"{name:<14} {seconds:>14.3f} {measured:>11.2f} {analytic:>11.2f} {full_cost.maps / cost.maps:>8.2f} "
            f"{measured / analytic:>10.2f}"
        )
    if args.profile:
        for name, layer in layers.items():
            print(f"--- {name}")
            print(profile_table(layer, x, ctx))


if __name__ == "__main__":
    main()
