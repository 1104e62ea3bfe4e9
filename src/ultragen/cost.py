"""Analytic forward FLOPs of a configured network's self-attention on a token grid: `ultragen cost`.

2 FLOPs per multiply-add (METHOD.md §7.3). "maps" counts QKᵀ and AV of every attention call; "total" adds the
q/k/v/o projections, LoRA deltas and the depthwise convolutions. Gates, norms, RoPE and resampling are O(N·D) and
left out. Each strategy computes its own cost (`AttentionStrategy.cost`); this module adds W_o, sums layers and
compares with full attention. Configs are read by `fit`'s own parser and strategies built on the meta device, so no
weights are allocated.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from jsonargparse import Namespace

from ultragen.lit.config import layer_strategies, read_config
from ultragen.models.attention import AttentionStrategy, FullAttention, VideoGrid
from ultragen.models.attention.base import AttentionCost

DEFAULT_MODEL = "configs/model/wan2.1_t2v_1.3b.yaml"


def layer_cost(strategy: AttentionStrategy, grid: VideoGrid) -> AttentionCost:
    """FLOPs of one self-attention layer with `strategy`, including W_o (2·N·D²)."""
    return strategy.cost(grid) + AttentionCost(0.0, 2.0 * grid.numel * strategy.dim**2)


def block_rest_flops(dim: int, ffn_dim: int, text_len: int, grid: VideoGrid) -> float:
    """Cross-attention (4ND² + 4LD² + 4NLD) and FFN (4·N·D·ffn) FLOPs of one DiT block."""
    n = grid.numel
    return 4.0 * n * dim * dim + 4.0 * text_len * dim * dim + 4.0 * n * text_len * dim + 4.0 * n * dim * ffn_dim


def totals(costs: Sequence[AttentionCost], full: AttentionCost, rest: float | None) -> dict:
    """Whole-network FLOPs of per-layer `costs` and of `full` attention in every layer: attention maps,
    self-attention with its projections, and (given the per-network `rest` of the blocks) whole blocks."""
    layers = len(costs)
    out = {
        "maps": sum(c.maps for c in costs), "full_maps": full.maps * layers,
        "self": sum(c.total for c in costs), "full_self": full.total * layers,
    }
    if rest is not None:
        out |= {"blocks": out["self"] + rest, "full_blocks": out["full_self"] + rest}
    return out


def network_totals(strategies: Sequence[AttentionStrategy], grid: VideoGrid, ffn_dim: int | None,
                   text_len: int) -> tuple[list[AttentionCost], AttentionCost, dict]:
    """Per-layer costs, the full-attention layer's cost and `totals` of a network of `strategies` on `grid`."""
    dim = strategies[0].dim
    full = layer_cost(FullAttention(dim, strategies[0].num_heads, 0), grid)
    costs = [layer_cost(s, grid) for s in strategies]
    rest = block_rest_flops(dim, ffn_dim, text_len, grid) * len(costs) if ffn_dim else None
    return costs, full, totals(costs, full, rest)


def comparison(rows: Sequence[tuple[str, Sequence[AttentionStrategy]]], grid: VideoGrid, ffn_dim: int | None,
               text_len: int) -> str:
    """One line per named configuration: attention-map and self-attention ratios vs full, whole-block TFLOP."""
    lines = [f"{'config':<40} {'maps x fewer':>12} {'self-attn x fewer':>18} {'block TFLOP':>12}"]
    for name, strategies in rows:
        t = network_totals(strategies, grid, ffn_dim, text_len)[2]
        blocks = f"{t['blocks'] / 1e12:>12,.0f}" if "blocks" in t else f"{'-':>12}"
        lines.append(f"{name:<40} {t['full_maps'] / t['maps']:>12.2f} {t['full_self'] / t['self']:>18.2f} {blocks}")
    return "\n".join(lines)


def report(strategies: Sequence[AttentionStrategy], grid: VideoGrid, ffn_dim: int | None, text_len: int) -> str:
    """Per-layer table and whole-model ratios against full attention."""
    costs, full, t = network_totals(strategies, grid, ffn_dim, text_len)
    lines = [
        f"grid {grid} (N = {grid.numel:,}), dim {strategies[0].dim}, {strategies[0].num_heads} heads, "
        f"{len(strategies)} layers",
        f"{'layer':>5}  {'strategy':<40} {'maps GFLOP':>12} {'x full':>8} {'total GFLOP':>12} {'x full':>8}",
    ]
    for i, (s, c) in enumerate(zip(strategies, costs)):
        lines.append(
            f"{i:>5}  {s.describe():<40} {c.maps / 1e9:>12.1f} {full.maps / c.maps:>8.2f} "
            f"{c.total / 1e9:>12.1f} {full.total / c.total:>8.2f}"
        )
    lines.append(f"self-attention, attention maps only: {t['full_maps'] / t['maps']:.2f}x fewer FLOPs than full")
    lines.append(f"self-attention incl. projections/convs/LoRA: {t['full_self'] / t['self']:.2f}x")
    if "blocks" in t:
        lines.append(
            f"whole DiT blocks (self + cross-attention + FFN, text length {text_len}): "
            f"{t['full_blocks'] / 1e12:,.0f} vs {t['blocks'] / 1e12:,.0f} TFLOP, {t['full_blocks'] / t['blocks']:.2f}x"
        )
    return "\n".join(lines)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """`-c/--config` (repeatable) and `--model`, the preset stacked before them, of the config-reading tools."""
    parser.add_argument("-c", "--config", action="append", required=True, help="YAML files, stacked in order")
    parser.add_argument(
        "--model", default=DEFAULT_MODEL,
        help=f"model preset stacked before the -c files (default {DEFAULT_MODEL}; 'none' to skip)",
    )


def config_paths(parser: argparse.ArgumentParser, model: str, configs: Sequence[str]) -> list[str]:
    """`--model` (unless 'none') and the `-c` files; a missing file is a one-line parser error."""
    paths = list(configs) if model == "none" else [model, *configs]
    for path in paths:
        if not Path(path).is_file():
            parser.error(f"config {path} not found" + ("; pass --model PATH or --model none" if path == model else ""))
    return paths


def parse_configs(parser: argparse.ArgumentParser, paths: Sequence[str]) -> Namespace:
    """`read_config` of `paths`, its errors as one-line parser errors."""
    try:
        return read_config(paths)
    except (ValueError, TypeError) as err:
        parser.error(" ".join(str(err).split()))


def text_length(config: Namespace, given: int | None) -> int:
    """Text tokens in cross-attention: `given`, else the text encoder's max_length, else 512 (umT5's)."""
    return given or config.get("model.text_encoder.init_args.max_length") or 512


def main(argv: list[str]) -> str:
    """`ultragen cost --grid TxHxW -c config.yaml [-c ...]`: per-layer attention FLOPs and ratios vs full."""
    parser = argparse.ArgumentParser(prog="ultragen cost", description=main.__doc__)
    parser.add_argument("--grid", required=True, type=VideoGrid.parse, help="token grid TxHxW, e.g. 21x68x120")
    add_config_arguments(parser)
    parser.add_argument(
        "--text-len", type=int, help="text tokens in cross-attention (default: the text encoder's max_length or 512)"
    )
    parser.add_argument(
        "--vs", action="append", default=[], metavar="YAML",
        help="another experiment file, stacked after the model preset and the -c files instead of the last -c one; "
        "adds a comparison table (repeatable), e.g. --vs configs/experiments/full.yaml",
    )
    args = parser.parse_args(argv)
    config = parse_configs(parser, config_paths(parser, args.model, args.config))
    ffn_dim, text_len = config.model.net.init_args.ffn_dim, text_length(config, args.text_len)
    try:
        strategies = layer_strategies(config)
        out = report(strategies, args.grid, ffn_dim, text_len)
        if not args.vs:
            return out
        rows = [(Path(args.config[-1]).stem, strategies)]
        for path in args.vs:
            alternative = parse_configs(parser, config_paths(parser, args.model, [*args.config[:-1], path]))
            rows.append((Path(path).stem, layer_strategies(alternative)))
        return out + "\n\n" + comparison(rows, args.grid, ffn_dim, text_len)
    except ValueError as err:
        parser.error(" ".join(str(err).split()))
