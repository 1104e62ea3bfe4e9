"""Attention cost against resolution: analytic FLOPs of whole configs (the cost model) and measured layer times.

`time_layers` and `profile_table` back `benchmarks/attention.py`; `cost_table`, `time_configs` and
`plot_cost_curves` back `notebooks/cost_curves.ipynb`. A config is a list of YAML files merged in order
(a model preset, then an experiment), as `ultragen cost` reads them.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path

import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from ultragen.cost import layer_cost
from ultragen.lit.config import layer_strategies, read_config
from ultragen.models.attention.base import (
    AttentionContext,
    AttentionCost,
    AttentionStrategy,
    VideoGrid,
)
from ultragen.models.blocks import SelfAttention
from ultragen.models.rope import RotaryTables
from ultragen.models.wan import sinusoidal_embedding

log = logging.getLogger(__name__)

Config = Sequence[str | Path]


#################################################################################
#                                  Measuring                                    #
#################################################################################


def attention_inputs(
    grid: VideoGrid,
    dim: int,
    num_heads: int,
    batch: int = 1,
    freq_dim: int = 256,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, AttentionContext]:
    """Random tokens (B, N, C) needing grad and a context at t = 500 with `freq_dim` timestep features (Wan: 256)."""
    freq = sinusoidal_embedding(freq_dim, torch.full((batch,), 500.0)).float().to(device)
    ctx = AttentionContext(grid, RotaryTables(dim // num_heads), freq)
    x = torch.randn(batch, grid.numel, dim, device=device, dtype=dtype, requires_grad=True)
    return x, ctx


def step_fn(layer: SelfAttention, x: Tensor, ctx: AttentionContext) -> Callable[[], float]:
    """A closure running one forward+backward of `layer` and returning its seconds."""
    grad = torch.randn_like(x)

    def step() -> float:
        for p in layer.parameters():
            p.grad = None
        x.grad = None
        start = time.perf_counter()
        layer(x, ctx).backward(grad)
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return step


def dit_step_fn(net: nn.Module, x: Tensor, t: Tensor, context: Tensor) -> Callable[[], float]:
    """A closure running one training-step forward+backward of a whole DiT (an MSE to a random target) and
    returning its seconds."""
    target = torch.randn_like(x)

    def step() -> float:
        for p in net.parameters():
            p.grad = None
        start = time.perf_counter()
        (net(x, t, context) - target).pow(2).mean().backward()
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return step


def time_layers(
    layers: Mapping[Hashable, SelfAttention], x: Tensor, ctx: AttentionContext, repeats: int = 3, warmup: int = 1
) -> dict[Hashable, float]:
    """Best forward+backward seconds of each layer; repeats are interleaved, so background load hits all alike."""
    return time_steps({name: step_fn(layer, x, ctx) for name, layer in layers.items()}, repeats, warmup)


def time_steps(steps: Mapping[Hashable, Callable[[], float]], repeats: int = 3, warmup: int = 1) -> dict[Hashable, float]:
    """Best seconds of each step closure; repeats are interleaved, so background load hits all alike."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats={repeats} must be >= 1 and warmup={warmup} >= 0")
    times: dict[Hashable, list[float]] = {name: [] for name in steps}
    for repeat in range(warmup + repeats):
        for name, step in steps.items():
            seconds = step()
            if repeat >= warmup:
                times[name].append(seconds)
    return {name: min(t) for name, t in times.items()}


def profile_table(layer: SelfAttention, x: Tensor, ctx: AttentionContext, rows: int = 25) -> str:
    """Profiler table of the top operators of one forward+backward."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if x.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        layer(x, ctx).backward(torch.randn_like(x))
    sort = "cuda_time_total" if x.device.type == "cuda" else "cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=rows)


#################################################################################
#                               Costs per resolution                            #
#################################################################################


def model_cost(strategies: Sequence[AttentionStrategy], grid: VideoGrid) -> AttentionCost:
    """Summed FLOPs of the self-attention layers `strategies` on `grid`."""
    return sum((layer_cost(s, grid) for s in strategies), AttentionCost())


def cost_or_none(name: str, strategies: Sequence[AttentionStrategy], grid: VideoGrid) -> AttentionCost | None:
    """`model_cost`, or None (logged) where a layer cannot run on `grid` (the strategy's own divisibility error)."""
    try:
        return model_cost(strategies, grid)
    except ValueError as err:
        log.warning("%s skipped on grid %s: %s", name, grid, err)
        return None


def cost_table(
    configs: Mapping[str, Config], grids: Mapping[str, VideoGrid]
) -> dict[str, dict[str, AttentionCost | None]]:
    """config -> resolution -> whole-model self-attention FLOPs (None where the config does not fit the grid)."""
    table = {}
    for name, paths in configs.items():
        strategies = layer_strategies(read_config(paths))
        table[name] = {res: cost_or_none(name, strategies, grid) for res, grid in grids.items()}
    return table


def time_configs(
    configs: Mapping[str, Config],
    grids: Mapping[str, VideoGrid],
    layers: Sequence[int],
    num_heads: int,
    head_dim: int,
    freq_dim: int = 256,
    repeats: int = 3,
    warmup: int = 1,
    threads: int | None = None,
) -> dict[str, dict[str, float | None]]:
    """config -> resolution -> best forward+backward seconds of `layers` (summed), built at width num_heads·head_dim
    on the CPU in float32 with `threads` torch threads (None: torch's setting); None where the config does not fit."""
    dim = num_heads * head_dim
    built = {}
    for name, paths in configs.items():
        strategies = layer_strategies(read_config(paths), dim=dim, num_heads=num_heads, device="cpu")
        built[name] = {i: SelfAttention(dim, num_heads, strategies[i]) for i in layers}
    table: dict[str, dict[str, float | None]] = {name: {} for name in configs}
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        for res, grid in grids.items():
            costs = {n: cost_or_none(n, [a.strategy for a in ls.values()], grid) for n, ls in built.items()}
            fitting = [n for n, cost in costs.items() if cost is not None]
            x, ctx = attention_inputs(grid, dim, num_heads, freq_dim=freq_dim)
            best = time_layers({(n, i): built[n][i] for n in fitting for i in layers}, x, ctx, repeats, warmup)
            for name in configs:
                table[name][res] = sum(best[name, i] for i in layers) if name in fitting else None
    finally:
        torch.set_num_threads(previous)
    return table


#################################################################################
#                                    Plotting                                   #
#################################################################################


def plot_cost_curves(
    analytic: Mapping[str, Mapping[str, AttentionCost | None]],
    measured: Mapping[str, Mapping[str, float | None]],
    grids: Mapping[str, VideoGrid],
    measured_grids: Mapping[str, VideoGrid],
    reference: str = "full",
) -> Figure:
    """Analytic TFLOPs, analytic speedup over `reference`, and measured seconds, each against resolution."""
    if reference not in analytic:
        raise ValueError(f"reference {reference!r} is not one of the analytic configs {list(analytic)}")
    fig = Figure(figsize=(14, 4.2), layout="constrained")
    flops, speedup, seconds = fig.subplots(1, 3)
    ref = analytic[reference]
    colors = {name: f"C{i}" for i, name in enumerate([*analytic, *(n for n in measured if n not in analytic)])}
    for name, row in analytic.items():
        costs = [row.get(r) for r in grids]
        style = dict(marker="o", label=name, color=colors[name])
        flops.plot([c.total / 1e12 if c else math.nan for c in costs], **style)
        speedup.plot([ref[r].total / c.total if c and ref.get(r) else math.nan for r, c in zip(grids, costs)], **style)
    for name, row in measured.items():
        if any(row.get(r) is not None for r in measured_grids):  # a config that fits no grid gets no legend entry
            seconds.plot([row.get(r) or math.nan for r in measured_grids], marker="o", label=name, color=colors[name])
    panels = (
        (flops, grids, "self-attention TFLOP (all layers, forward)", "analytic cost"),
        (speedup, grids, f"{reference} / config (FLOPs)", f"analytic speedup over {reference}"),
        (seconds, measured_grids, "seconds (forward + backward)", "measured on this CPU, scaled-down grids"),
    )
    for ax, axis_grids, ylabel, title in panels:
        ax.set_xticks(range(len(axis_grids)), [f"{r}\n{g}" for r, g in axis_grids.items()], fontsize=8)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    flops.set_yscale("log")
    seconds.set_yscale("log")
    return fig
