"""Analytic forward FLOPs of self-attention strategies on a token grid, and the `ultragen cost` subcommand.

2 FLOPs per multiply-add (METHOD.md §7.3). "maps" counts QKᵀ and AV of every attention call; "total"
adds the q/k/v/o projections, LoRA deltas and the depthwise convolutions. Gates, norms, RoPE and
resampling are O(N·D) and left out. Strategies are built on the meta device, so no weights are allocated.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
import yaml

from ultragen.models.attention.base import AttentionBackend, AttentionCost, AttentionStrategy, VideoGrid, resolve_layers
from ultragen.models.attention.full import FullAttention
from ultragen.models.wan import WanDiT

DEFAULT_MODEL = "configs/model/wan2.1_t2v_1.3b.yaml"


def layer_cost(strategy: AttentionStrategy, grid: VideoGrid) -> AttentionCost:
    """FLOPs of one self-attention layer with `strategy`, including W_o (2·N·D²)."""
    return strategy.cost(grid) + AttentionCost(0.0, 2.0 * grid.numel * strategy.dim**2)


def block_rest_flops(dim: int, ffn_dim: int, text_len: int, grid: VideoGrid) -> float:
    """Cross-attention (4ND² + 4LD² + 4NLD) and FFN (4·N·D·ffn) FLOPs of one DiT block."""
    n = grid.numel
    return 4.0 * n * dim * dim + 4.0 * text_len * dim * dim + 4.0 * n * text_len * dim + 4.0 * n * dim * ffn_dim


#################################################################################
#                                 Config reading                                #
#################################################################################


def merge_configs(base: Any, override: Any) -> Any:
    """LightningCLI-style merge: dicts merge recursively; a new `class_path` replaces the whole entry."""
    if not (isinstance(base, dict) and isinstance(override, dict)):
        return override
    if "class_path" in override and override.get("class_path") != base.get("class_path"):
        return override
    merged = dict(base)
    for key, value in override.items():
        merged[key] = merge_configs(base[key], value) if key in base else value
    return merged


def load_configs(paths: Sequence[str | Path]) -> dict:
    """Read YAML files with safe_load and merge them in order."""
    config: dict = {}
    for path in paths:
        with open(path) as f:
            config = merge_configs(config, yaml.safe_load(f) or {})
    return config


def import_class(class_path: str) -> type:
    """Class from a dotted path, or a bare name exported by `ultragen.models.attention`."""
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module or "ultragen.models.attention"), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import attention class_path {class_path!r}: {err}") from err


def build_strategies(net: Mapping[str, Any], device: torch.device | str = "meta") -> list[AttentionStrategy]:
    """Per-layer strategies of a `model.net.init_args` mapping, on `device` (meta: no weight memory)."""
    missing = [k for k in ("dim", "num_heads", "num_layers") if k not in net]
    if missing:
        raise ValueError(
            f"model.net.init_args lacks {missing}; add a model preset, e.g. -c configs/model/<preset>.yaml"
        )
    dim, heads, layers = (int(net[k]) for k in ("dim", "num_heads", "num_layers"))
    spec = net.get("attention") or {"class_path": "ultragen.models.attention.full.FullAttention"}
    if isinstance(spec, str):
        spec = {"class_path": spec}
    cls, init_args = import_class(spec["class_path"]), dict(spec.get("init_args") or {})
    full = set(resolve_layers("full_attention_layers", net.get("full_attention_layers") or [], layers))
    defaults = inspect.signature(WanDiT).parameters  # what the network supplies when the YAML leaves it out
    freq_dim = int(net.get("freq_dim", defaults["freq_dim"].default))
    backend = AttentionBackend(net.get("attention_backend", defaults["attention_backend"].default))
    with torch.device(device):
        return [
            (FullAttention if i in full else partial(cls, **init_args))(dim, heads, i, freq_dim, backend)
            for i in range(layers)
        ]


def net_args(config: Mapping[str, Any]) -> dict:
    """`model.net.init_args` of a merged config ({} where absent)."""
    return dict(((config.get("model") or {}).get("net") or {}).get("init_args") or {})


def config_strategies(
    paths: Sequence[str | Path],
    dim: int | None = None,
    num_heads: int | None = None,
    device: torch.device | str = "meta",
) -> list[AttentionStrategy]:
    """Per-layer strategies of merged YAML `paths` (a model preset, then overrides), optionally at another width."""
    net = net_args(load_configs(paths))
    net.update({k: v for k, v in (("dim", dim), ("num_heads", num_heads)) if v is not None})
    return build_strategies(net, device)


#################################################################################
#                                   Subcommand                                  #
#################################################################################


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
    """`-c/--config` (repeatable) and `--model`, the preset merged before them, of the config-reading tools."""
    parser.add_argument("-c", "--config", action="append", required=True, help="YAML files, merged in order")
    parser.add_argument(
        "--model", default=DEFAULT_MODEL,
        help=f"model preset merged before the -c files (default {DEFAULT_MODEL}; 'none' to skip)",
    )


def read_config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict:
    """The merged config of `--model` and the `-c` files; a missing file is a one-line parser error."""
    paths = list(args.config)
    if args.model != "none":
        if not Path(args.model).is_file():
            parser.error(f"model preset {args.model} not found; pass --model PATH or --model none with dims in -c")
        paths.insert(0, args.model)
    for path in paths:
        if not Path(path).is_file():
            parser.error(f"config {path} not found")
    return load_configs(paths)


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
        help="another experiment file, merged after the model preset and the -c files instead of the last -c one; "
        "adds a comparison table (repeatable), e.g. --vs configs/experiments/full.yaml",
    )
    args = parser.parse_args(argv)
    config = read_config(parser, args)
    model, net = config.get("model") or {}, net_args(config)
    text_len = int(args.text_len or ((model.get("text_encoder") or {}).get("init_args") or {}).get("max_length") or 512)
    strategies = build_strategies(net)
    out = report(strategies, args.grid, net.get("ffn_dim"), text_len)
    if not args.vs:
        return out
    rows = [(Path(args.config[-1]).stem, strategies)]
    for path in args.vs:
        alternative = read_config(parser, argparse.Namespace(config=[*args.config[:-1], path], model=args.model))
        rows.append((Path(path).stem, build_strategies(net_args(alternative))))
    return out + "\n\n" + comparison(rows, args.grid, net.get("ffn_dim"), text_len)
