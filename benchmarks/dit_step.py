"""Time one training step (forward + backward) of the same small WanDiT with each attention strategy in every block.

The CPU analogue of the paper's end-to-end ratio: besides self-attention, each step runs the patch embedding,
modulation, cross-attention, FFN and head, which no strategy changes. Prints per strategy the measured time ratio
vs full attention, the analytic whole-block FLOP ratio (`ultragen.cost.network_totals`: self-attention with its
projections, cross-attention and FFN), and measured / analytic.

    python benchmarks/dit_step.py                                     # 5x40x48 tokens (9,600), CPU
    python benchmarks/dit_step.py --only ultragen,sta,topk,nabla --pad replicate
    python benchmarks/dit_step.py --grid 21x68x120 --device cuda --dtype bfloat16 --backend flex
"""

from __future__ import annotations

import argparse

import torch
from attention import add_run_arguments, add_strategy_arguments, strategies

from ultragen.bench import dit_step_fn, time_steps
from ultragen.cost import network_totals
from ultragen.models.attention import VideoGrid
from ultragen.models.wan import WanDiT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", type=VideoGrid.parse, default=VideoGrid(5, 40, 48), help="token grid TxHxW")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--text-len", type=int, default=16)
    add_run_arguments(parser)
    add_strategy_arguments(parser)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    dim, grid, in_dim = args.heads * args.head_dim, args.grid, 16
    factories = strategies(args)
    names = ["full"] + [n for n in (args.only.split(",") if args.only else factories) if n != "full"]
    nets = {}
    for name in names:
        torch.manual_seed(0)
        nets[name] = WanDiT(
            in_dim, dim, dim, 4 * dim, args.heads, args.layers, attention=factories[name],
            attention_backend=args.backend,
        ).to(device, dtype)
    torch.manual_seed(1)
    x = torch.randn(1, in_dim, grid.t, grid.h * 2, grid.w * 2, device=device, dtype=dtype)  # patch 1x2x2
    t, context = torch.tensor([500.0], device=device), torch.randn(1, args.text_len, dim, device=device, dtype=dtype)
    print(
        f"grid {grid} (N = {grid.numel:,}), {args.layers} blocks of width {dim} ({args.heads} heads x {args.head_dim}),"
        f" text {args.text_len}, {device} {args.dtype}, backend {args.backend}, {torch.get_num_threads()} threads, "
        f"{args.warmup} warm-up + {args.repeats} interleaved repeats (best)"
    )
    best = time_steps({n: dit_step_fn(net, x, t, context) for n, net in nets.items()}, args.repeats, args.warmup)
    header = ("strategy", "best step s", "measured x", "analytic x", "meas/anal")
    print(f"{header[0]:<12} {header[1]:>12} {header[2]:>11} {header[3]:>11} {header[4]:>10}")
    for name, net in nets.items():
        per_layer = [b.self_attn.strategy for b in net.blocks]
        totals = network_totals(per_layer, grid, 4 * dim, args.text_len)[2]
        measured, analytic = best["full"] / best[name], totals["full_blocks"] / totals["blocks"]
        print(f"{name:<12} {best[name]:>12.3f} {measured:>11.2f} {analytic:>11.2f} {measured / analytic:>10.2f}")


if __name__ == "__main__":
    main()
