"""Attention patterns probed from the strategies agree with the windows worked out by hand."""

from pathlib import Path

import pytest
import torch
from matplotlib.figure import Figure

from ultragen.eval.patterns import config_layers, plot_visibility, visibility, visibility_maps
from ultragen.models.attention import (
    CompressionOptions,
    FullAttention,
    GlobalCompressedAttention,
    HierarchicalAttention,
    LocalWindowAttention,
    MultiScaleWindowAttention,
    Padding,
    SwinAttention,
    UltraGenAttention,
    VideoGrid,
    WindowOptions,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
DIM, HEADS = 32, 2


def box(grid: VideoGrid, frames: range, rows: range, cols: range) -> torch.Tensor:
    """Bool (T, H, W) map that is True on frames × rows × cols."""
    mask = torch.zeros(grid.t, grid.h, grid.w, dtype=torch.bool)
    mask[frames.start : frames.stop, rows.start : rows.stop, cols.start : cols.stop] = True
    return mask


def test_full_and_global_attention_see_every_token():
    grid = VideoGrid(2, 8, 12)
    assert visibility(FullAttention(DIM, HEADS, 0), grid, (1, 3, 5)).all()
    assert visibility(
        GlobalCompressedAttention(DIM, HEADS, 0, compression=CompressionOptions(factor=4)), grid, (0, 7, 0)
    ).all()


def test_local_window_sees_exactly_its_window_in_every_frame():
    grid = VideoGrid(2, 8, 12)  # 4x4 windows of 2x3 tokens
    seen = visibility(LocalWindowAttention(DIM, HEADS, 0, windows=WindowOptions(counts=[[4, 4]])), grid, (1, 3, 5))
    assert torch.equal(seen, box(grid, range(2), range(2, 4), range(3, 6)))


def test_cross_window_alternation_changes_the_partition_between_layers():
    grid, query = VideoGrid(1, 12, 12), (0, 5, 5)
    even, odd = (
        visibility(LocalWindowAttention(DIM, HEADS, i, windows=WindowOptions(counts=[[4, 4], [3, 3]])), grid, query)
        for i in (0, 1)
    )
    assert torch.equal(even, box(grid, range(1), range(3, 6), range(3, 6)))  # 3x3-token windows
    assert torch.equal(odd, box(grid, range(1), range(4, 8), range(4, 8)))  # 4x4-token windows


def test_replicate_padding_keeps_the_edge_window_inside_the_grid():
    grid = VideoGrid(1, 10, 8)  # 10 rows padded to 12: windows of 3 rows, the last one has a single real row
    seen = visibility(
        LocalWindowAttention(DIM, HEADS, 0, padding=Padding("replicate"), windows=WindowOptions(counts=[[4, 2]])),
        grid,
        (0, 9, 1),
    )
    assert torch.equal(seen, box(grid, range(1), range(9, 10), range(0, 4)))


def test_swin_shifts_the_window_by_half_in_the_shifted_layer():
    grid, query = VideoGrid(1, 8, 8), (0, 3, 3)
    plain, shifted = (
        visibility(
            SwinAttention(DIM, HEADS, i, windows=WindowOptions(counts=[[2, 2]], shifts=[False, True])), grid, query
        )
        for i in (0, 1)
    )
    assert torch.equal(plain, box(grid, range(1), range(0, 4), range(0, 4)))
    assert torch.equal(shifted, box(grid, range(1), range(2, 6), range(2, 6)))  # windows start 2 tokens in


def test_t3_sees_its_close_window_and_its_strided_remote_window():
    grid, (t, h, w) = VideoGrid(2, 4, 6), (0, 1, 1)
    seen = visibility(
        MultiScaleWindowAttention(DIM, HEADS, 0, windows=WindowOptions(counts=[[1, 2, 2]])), grid, (t, h, w)
    )
    close = box(grid, range(2), range(0, 2), range(0, 3))
    rows, cols = torch.arange(4)[:, None], torch.arange(6)[None, :]
    remote = ((rows % 2 == h % 2) & (cols % 2 == w % 2)).expand(2, 4, 6)
    assert torch.equal(seen, close | remote)


def test_t3_temporal_windows_depend_on_the_query_frame():
    grid = VideoGrid(4, 2, 2)  # 2 frames per close window; remote windows take every other frame
    seen = visibility(
        MultiScaleWindowAttention(DIM, HEADS, 0, windows=WindowOptions(counts=[[2, 1, 1]])), grid, (3, 0, 0)
    )
    assert seen.flatten(1).all(1).tolist() == [False, True, True, True]  # close: frames 2-3, remote: frames 1, 3


def test_hierarchical_window_inside_a_coarse_window_and_its_bilinear_spill():
    grid = VideoGrid(1, 16, 16)  # 2x down -> 8x8, 2x2 coarse windows of 4x4 coarse = 8x8 full tokens
    strategy = HierarchicalAttention(
        DIM, HEADS, 0, compression=CompressionOptions(factor=2), windows=WindowOptions(counts=[[2, 2]])
    )
    assert torch.equal(visibility(strategy, grid, (0, 3, 3)), box(grid, range(1), range(0, 8), range(0, 8)))
    # row 7 upsamples from coarse rows 3 and 4, which lie in different coarse windows: both halves are read
    assert torch.equal(visibility(strategy, grid, (0, 7, 3)), box(grid, range(1), range(0, 16), range(0, 8)))


def test_composite_maps_are_the_union_of_their_branches():
    grid, query = VideoGrid(1, 8, 8), (0, 2, 5)
    strategy = UltraGenAttention(
        DIM,
        HEADS,
        0,
        local_windows=WindowOptions(counts=[[2, 2]]),
        hier_windows=WindowOptions(counts=[[2, 2]]),
        global_compression=CompressionOptions(factor=2),
    )
    local = LocalWindowAttention(DIM, HEADS, 0, windows=WindowOptions(counts=[[2, 2]]))
    maps = visibility_maps({"ug": strategy, "local": local}, grid, query)
    assert list(maps) == ["ug", "ug · local", "ug · hierarchical", "ug · global", "local"]
    assert torch.equal(maps["ug"], maps["ug · local"] | maps["ug · hierarchical"] | maps["ug · global"])
    assert torch.equal(maps["ug · local"], maps["local"])
    assert maps["ug · global"].all() and not maps["ug · local"].all()


def test_config_layers_follow_the_experiment_schedule():
    paths = [CONFIGS / "model" / "wan2.1_t2v_1.3b.yaml", CONFIGS / "experiments" / "ultragen_1080p.yaml"]
    layers = config_layers(paths, [2, 3, 4])
    assert list(layers) == [
        "layer 2: FullAttention",
        "layer 3: UltraGenAttention[L5x5 H3x3/2 G/4]",
        "layer 4: UltraGenAttention[L4x4 H2x2/2 G/4]",
    ]
    assert all(s.dim == DIM and s.num_heads == HEADS for s in layers.values())  # built at the small default width
    grid, query = VideoGrid(1, 20, 20), (0, 9, 9)
    odd, even = (visibility(s.local_branch, grid, query) for s in list(layers.values())[1:])
    assert torch.equal(odd, box(grid, range(1), range(8, 12), range(8, 12)))
    assert torch.equal(even, box(grid, range(1), range(5, 10), range(5, 10)))


def test_query_outside_the_grid_and_meta_weights_are_rejected():
    with pytest.raises(ValueError, match=r"query \(0, 8, 0\) is not a \(t, h, w\) token of the grid 1x8x8"):
        visibility(FullAttention(DIM, HEADS, 0), VideoGrid(1, 8, 8), (0, 8, 0))
    with torch.device("meta"):
        strategy = GlobalCompressedAttention(DIM, HEADS, 0, compression=CompressionOptions(factor=2))
    with pytest.raises(ValueError, match="meta-device weights; build it on the CPU"):
        visibility(strategy, VideoGrid(1, 8, 8), (0, 0, 0))


def test_plot_has_one_panel_per_map_with_the_share_seen():
    grid, query = VideoGrid(2, 4, 4), (1, 0, 0)
    maps = {"full": torch.ones(2, 4, 4, dtype=torch.bool), "window": box(grid, range(1, 2), range(0, 2), range(0, 2))}
    fig = plot_visibility(maps, query, ncols=1)
    assert isinstance(fig, Figure)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["full\nsees 100.0% of 32 tokens", "window\nsees 12.5% of 32 tokens"]
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["t=0", "t=1"]
    with pytest.raises(ValueError, match=r"frames \[2\] must be"):
        plot_visibility(maps, query, frames=[2])
