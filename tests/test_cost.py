"""Cost model against METHOD.md: Eq. 13, the §7.2 per-block table, §7.3 whole-DiT FLOPs, T3's 43x; the CLI."""

from pathlib import Path

import pytest
import torch
import yaml

from ultragen.cli import main as cli
from ultragen.models.attention import CompressionOptions, FullAttention, VideoGrid, WindowOptions
from ultragen.cost import block_rest_flops, layer_cost, main
from ultragen.lit.config import layer_strategies, read_config
from ultragen.models.attention.global_local import UltraGenAttention

CONFIGS = Path(__file__).parents[1] / "configs"
WAN_13B = dict(dim=1536, num_heads=12, num_layers=30)  # METHOD.md §3.1
GRID_1080P, GRID_4K = VideoGrid(21, 68, 120), VideoGrid(8, 135, 240)


def strategies_of(preset: str, experiment: str) -> list:
    """Per-layer strategies of a model preset stacked with an experiment, on the meta device."""
    return layer_strategies(read_config([CONFIGS / "model" / preset, CONFIGS / "experiments" / experiment]))


def release_strategies() -> list:
    """Wan2.1-1.3B widths + the ultragen_release experiment's attention settings."""
    return strategies_of("wan2.1_t2v_1.3b.yaml", "ultragen_release.yaml")


def map_speedup(strategy, grid: VideoGrid) -> float:
    return layer_cost(FullAttention(strategy.dim, strategy.num_heads, 0), grid).maps / layer_cost(strategy, grid).maps


@pytest.mark.parametrize("k", [2, 4, 6, 8])
def test_equation_13(k):
    grid = VideoGrid(3, 4 * k, 6 * k)
    with torch.device("meta"):
        s = UltraGenAttention(
            1536,
            12,
            0,
            local_windows=WindowOptions(counts=[[k, k]]),
            hier_windows=WindowOptions(counts=[[k // 2, k // 2]]),
            global_compression=CompressionOptions(factor=k),
        )
    assert map_speedup(s, grid) == pytest.approx(4 * k**4 / (5 * k**2 + 4), rel=1e-12)
    if k == 4:
        assert round(map_speedup(s, grid), 2) == 12.19


@pytest.mark.parametrize(
    "grid,layer,branches,speedup",
    [
        (GRID_1080P, 4, (0.0625, 0.0039, 0.0156), 12.19),
        (GRID_1080P, 3, (0.0424, 0.0039, 0.0065), 18.93),
        (GRID_4K, 4, (0.0634, 0.0037, 0.0149), 12.18),
        (GRID_4K, 3, (0.0400, 0.0037, 0.0066), 19.85),
    ],
)
def test_method_7_2_per_block_table(grid, layer, branches, speedup):
    s = release_strategies()[layer]
    full = 4.0 * grid.numel**2 * s.dim
    parts = [b.cost(grid).maps / full for b in (s.local_branch, s.global_branch, s.hier_branch)]
    assert [round(p, 4) for p in parts] == list(branches)
    assert round(map_speedup(s, grid), 2) == speedup


@pytest.mark.parametrize(
    "grid,maps,dit_full,dit_ultragen,dit_ratio",
    [
        (GRID_1080P, 3.94, 5857, 1840, 3.18),
        (GRID_4K, 3.95, 13056, 3836, 3.40),
        (VideoGrid(21, 135, 240), 3.95, 87096, 23434, 3.72),
    ],
)
def test_whole_model_ratios(grid, maps, dit_full, dit_ultragen, dit_ratio):
    strategies = release_strategies()
    full = layer_cost(FullAttention(1536, 12, 0), grid)
    costs = [layer_cost(s, grid) for s in strategies]
    assert round(30 * full.maps / sum(c.maps for c in costs), 2) == maps
    rest = 30 * block_rest_flops(1536, 8960, 512, grid)
    full_dit, ours = (30 * full.total + rest) / 1e12, (sum(c.total for c in costs) + rest) / 1e12
    assert full_dit == pytest.approx(dit_full, rel=5e-4)
    assert ours == pytest.approx(dit_ultragen, rel=2e-3)  # the release computes W_q twice for global keys; we once
    assert round(full_dit / ours, 2) == dit_ratio


def test_t3_cycle_matches_reported_43x():
    strategies = strategies_of("wan2.1_t2v_1.3b.yaml", "t3_multiscale.yaml")
    grid = VideoGrid(21, 136, 240)
    full = layer_cost(FullAttention(1536, 12, 0), grid).maps
    assert round(30 * full / sum(layer_cost(s, grid).maps for s in strategies), 1) == 43.0


def test_t3_wan22_counts_give_the_released_window_sizes_on_its_4k_grid():
    strategies = strategies_of("wan2.2_ti2v_5b.yaml", "t3_4k_wan22.yaml")
    grid = VideoGrid(21, 68, 120)
    sizes = [tuple(g // n for g, n in zip(grid, s.counts)) for s in strategies[:5]]
    assert sizes == [(1, 68, 120), (21, 4, 6), (21, 4, 20), (7, 17, 8), (3, 17, 15)]  # METHOD.md §8.2
    assert all(layer_cost(s, grid).maps > 0 for s in strategies)  # every layer's counts divide the grid


def test_vs_prints_one_comparison_row_per_experiment():
    """The Wan2.2 4K comparison in one command; the T3 row is its own per-layer total, the full row 1x."""
    experiments = CONFIGS / "experiments"
    out = main(
        [
            "--grid",
            "21x68x120",
            "--model",
            str(CONFIGS / "model" / "wan2.2_ti2v_5b.yaml"),
            "-c",
            str(experiments / "full.yaml"),
            "--vs",
            str(experiments / "ultragen_4k_wan22.yaml"),
            "--vs",
            str(experiments / "t3_4k_wan22.yaml"),
        ]
    )
    rows = {line.split()[0]: line.split()[1:] for line in out.split("\n\n")[-1].splitlines()[1:]}
    assert list(rows) == ["full", "ultragen_4k_wan22", "t3_4k_wan22"]
    assert rows["full"][:2] == ["1.00", "1.00"] and float(rows["t3_4k_wan22"][0]) == pytest.approx(35.52, abs=0.01)
    alone = main(
        [
            "--grid",
            "21x68x120",
            "--model",
            str(CONFIGS / "model" / "wan2.2_ti2v_5b.yaml"),
            "-c",
            str(experiments / "t3_4k_wan22.yaml"),
        ]
    )
    assert f"{rows['t3_4k_wan22'][2]} TFLOP" in alone  # the same whole-block total as its own report


def test_strategies_are_built_without_weight_memory():
    strategies = release_strategies()
    params = [p for s in strategies for p in s.parameters()]
    assert params and all(p.is_meta for p in params)
    with pytest.raises(ValueError, match=r"no model.net widths; add a model preset, e.g. -c configs/model"):
        read_config([CONFIGS / "experiments" / "ultragen_release.yaml"])


def test_configs_stack_as_fit_stacks_them(tmp_path):
    """The reader is `fit`'s parser: a new class_path replaces the attention entry, a later file's options merge field
    by field into the earlier ones, and signature defaults fill what no file sets."""
    swin, shifted = tmp_path / "swin.yaml", tmp_path / "shifted.yaml"
    swin.write_text(
        "model: {net: {init_args: {attention: {class_path: ultragen.models.attention.SwinAttention,"
        " init_args: {windows: {counts: [[2, 2]]}}}}}}"
    )
    shifted.write_text("model: {net: {init_args: {attention: {init_args: {windows: {shifts: [true]}}}}}}")
    stack = [CONFIGS / "model" / "wan2.1_t2v_1.3b.yaml", CONFIGS / "experiments" / "ultragen_release.yaml"]
    config = read_config([*stack, swin, shifted])
    attention = config.model.net.init_args.attention
    assert attention.class_path.endswith("SwinAttention") and "local_windows" not in attention.init_args
    assert attention.init_args.windows.counts == ((2, 2),) and attention.init_args.windows.shifts == (True,)
    assert config.model.net.init_args.full_attention_layers == [0, 1, 2, -3, -2, -1]  # kept from the experiment
    assert config.model.trainable == "all"  # VideoDiffusionModule's default


def test_cli_prints_table_and_ratios(tmp_path, capsys):
    model = tmp_path / "model.yaml"
    model.write_text(
        yaml.safe_dump(
            {"model": {"net": {"class_path": "ultragen.models.wan.WanDiT", "init_args": {**WAN_13B, "ffn_dim": 8960}}}}
        )
    )
    cli(
        [
            "cost",
            "--grid",
            "21x68x120",
            "--model",
            str(model),
            "-c",
            str(CONFIGS / "experiments" / "ultragen_release.yaml"),
        ]
    )
    out = capsys.readouterr().out
    assert "grid 21x68x120 (N = 171,360)" in out
    assert len([line for line in out.splitlines() if "UltraGenAttention" in line]) == 24
    assert "attention maps only: 3.94x" in out and "3.18x" in out
    out = main(
        ["--grid", "21x68x120", "--model", "none", "-c", str(model), "-c", str(CONFIGS / "experiments" / "full.yaml")]
    )
    assert "attention maps only: 1.00x" in out
    with pytest.raises(SystemExit):
        main(["--grid", "21x68", "-c", str(model)])
