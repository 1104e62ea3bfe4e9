"""Local windows, Swin shifted windows and T3 multi-scale windows against independent references."""

import pytest
import torch
import torch.nn.functional as F

from ultragen.models.attention import (
    AttentionContext,
    FullAttention,
    Padding,
    VideoGrid,
    WindowOptions,
)
from ultragen.models.attention.multiscale import MultiScaleWindowAttention
from ultragen.models.attention.options import nearest_multiple
from ultragen.models.attention.window import LocalWindowAttention, SwinAttention
from ultragen.models.blocks import SelfAttention
from ultragen.models.rope import RotaryTables, apply_rope
from ultragen.models.wan import sinusoidal_embedding

DIM, HEADS = 32, 2


def make_ctx(grid: VideoGrid, batch: int = 2, freq_dim: int = 256) -> AttentionContext:
    """Context for `grid` with distinct timesteps per sample."""
    t = torch.linspace(10.0, 990.0, batch)
    return AttentionContext(grid, RotaryTables(DIM // HEADS), sinusoidal_embedding(freq_dim, t).float())


def layer(strategy, seed: int = 0) -> SelfAttention:
    """SelfAttention with the same (seeded) base weights for every strategy."""
    torch.manual_seed(seed)
    ref = SelfAttention(DIM, HEADS, FullAttention(DIM, HEADS, 0))
    for p in (ref.norm_q.weight, ref.norm_k.weight):  # non-trivial norm gains
        torch.nn.init.uniform_(p, 0.5, 1.5)
    out = SelfAttention(DIM, HEADS, strategy)
    missing, unexpected = out.load_state_dict(ref.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("strategy.") for k in missing)
    return out


def inputs(grid: VideoGrid, batch: int = 2, seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn(batch, grid.numel, DIM)


def masked_reference(attn: SelfAttention, x: torch.Tensor, grid: VideoGrid, id_maps: list[torch.Tensor]):
    """Mean over id maps of global-RoPE attention restricted to token pairs with equal id (before W_o)."""
    q, k, v = attn.qkv(x)
    rope = RotaryTables(DIM // HEADS).for_grid(*grid)
    q, k = apply_rope(q, rope), apply_rope(k, rope)
    outs = []
    for ids in id_maps:
        mask = ids.reshape(-1)[:, None] == ids.reshape(-1)[None, :]
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
        outs.append(o.transpose(1, 2).flatten(2))
    return sum(outs) / len(outs)


def pre_o(attn: SelfAttention, x: torch.Tensor, grid: VideoGrid) -> torch.Tensor:
    """The strategy's output (B, N, C), before W_o."""
    return attn.strategy(attn, x, make_ctx(grid, x.shape[0]))


def coords(grid: VideoGrid) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.meshgrid(*(torch.arange(n) for n in grid), indexing="ij")


def window_ids(grid: VideoGrid, nh: int, nw: int) -> torch.Tensor:
    _, r, c = coords(grid)
    return (r // (grid.h // nh)) * nw + c // (grid.w // nw)


def per_window_full(attn: SelfAttention, x: torch.Tensor, grid: VideoGrid, nh: int, nw: int) -> torch.Tensor:
    """FullAttention run separately on each window's sub-grid (positions restart per window), before W_o."""
    b = x.shape[0]
    xs, hh, ww = x.view(b, *grid, DIM), grid.h // nh, grid.w // nw
    out = torch.empty_like(xs)
    full = FullAttention(DIM, HEADS, 0)
    for i in range(nh):
        for j in range(nw):
            sub = xs[:, :, i * hh : (i + 1) * hh, j * ww : (j + 1) * ww].reshape(b, -1, DIM)
            sub_ctx = make_ctx(VideoGrid(grid.t, hh, ww), b)
            y = full(attn, sub, sub_ctx).view(b, grid.t, hh, ww, DIM)
            out[:, :, i * hh : (i + 1) * hh, j * ww : (j + 1) * ww] = y
    return out.view(b, -1, DIM)


#################################################################################
#                                Local windows                                  #
#################################################################################


@pytest.mark.parametrize("rope", ["global", "window"])
def test_one_window_equals_full_attention(rope):
    grid = VideoGrid(3, 5, 7)
    x, ctx = inputs(grid), make_ctx(grid)
    expected = layer(FullAttention(DIM, HEADS, 0))(x, ctx)
    got = layer(LocalWindowAttention(DIM, HEADS, 0, windows=WindowOptions(counts=[[1, 1]], rope=rope)))(x, ctx)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layer_idx,nh,nw", [(0, 2, 2), (1, 3, 4)])
def test_windows_cycle_per_layer_and_match_masked_attention(layer_idx, nh, nw):
    grid = VideoGrid(2, 6, 8)
    attn = layer(LocalWindowAttention(DIM, HEADS, layer_idx, windows=WindowOptions(counts=[[2, 2], [3, 4]])))
    assert attn.strategy.window_grid == (nh, nw)
    x = inputs(grid)
    expected = masked_reference(attn, x, grid, [window_ids(grid, nh, nw)])
    torch.testing.assert_close(pre_o(attn, x, grid), expected, rtol=1e-5, atol=1e-5)


def test_window_rope_restarts_in_every_window():
    grid = VideoGrid(2, 6, 8)
    attn = layer(LocalWindowAttention(DIM, HEADS, 0, windows=WindowOptions(counts=[[2, 4]], rope="window")))
    x = inputs(grid)
    torch.testing.assert_close(pre_o(attn, x, grid), per_window_full(attn, x, grid, 2, 4), rtol=1e-5, atol=1e-5)


def test_perturbing_outside_a_window_leaves_it_unchanged():
    grid = VideoGrid(2, 6, 8)
    attn = layer(LocalWindowAttention(DIM, HEADS, 0, windows=WindowOptions(counts=[[2, 2]])))
    x, ctx = inputs(grid), make_ctx(grid)
    inside = (window_ids(grid, 2, 2) == 0).reshape(-1)
    y = x.clone()
    y[:, ~inside] += torch.randn_like(y[:, ~inside])
    a, b = attn(x, ctx), attn(y, ctx)
    torch.testing.assert_close(a[:, inside], b[:, inside], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, ~inside], b[:, ~inside])


@pytest.mark.parametrize("grid", [VideoGrid(2, 7, 11), VideoGrid(1, 13, 5), VideoGrid(3, 9, 10)])
def test_awkward_grids_error_names_grid_windows_and_fix(grid):
    attn = layer(LocalWindowAttention(DIM, HEADS, 0, windows=WindowOptions(counts=[[4, 4]])))
    with pytest.raises(ValueError, match=rf"token grid {grid}.*window grid 4x4.*padding: {{policy: replicate}} \(or interpolate\)"):
        attn(inputs(grid), make_ctx(grid))


def replicate_pad(x: torch.Tensor, grid: VideoGrid, h: int, w: int) -> torch.Tensor:
    """Edge-replicate the (H, W) plane of x (B, N, C) to (h, w) with F.pad."""
    b = x.shape[0]
    planes = x.view(b * grid.t, grid.h, grid.w, DIM).permute(0, 3, 1, 2)
    padded = F.pad(planes, (0, w - grid.w, 0, h - grid.h), mode="replicate")
    return padded.permute(0, 2, 3, 1).reshape(b, -1, DIM)


@pytest.mark.parametrize("grid", [VideoGrid(2, 7, 11), VideoGrid(1, 13, 5)])
def test_replicate_pad_equals_explicit_edge_padding(grid):
    attn = layer(
        LocalWindowAttention(
            DIM, HEADS, 0, padding=Padding("replicate"), windows=WindowOptions(counts=[[2, 3]], rope="window")
        )
    )
    x = inputs(grid)
    h, w = -(-grid.h // 2) * 2, -(-grid.w // 3) * 3
    padded = VideoGrid(grid.t, h, w)
    ref = per_window_full(attn, replicate_pad(x, grid, h, w), padded, 2, 3).view(2, *padded, DIM)
    expected = ref[:, :, : grid.h, : grid.w].reshape(2, -1, DIM)
    torch.testing.assert_close(pre_o(attn, x, grid), expected, rtol=1e-5, atol=1e-5)


def resize(x: torch.Tensor, grid: VideoGrid, h: int, w: int) -> torch.Tensor:
    b, c = x.shape[0], x.shape[-1]
    planes = x.view(b * grid.t, grid.h, grid.w, c).permute(0, 3, 1, 2)
    out = F.interpolate(planes, size=(h, w), mode="bilinear", align_corners=False)
    return out.permute(0, 2, 3, 1).reshape(b, -1, c)


def test_interpolate_reproduces_the_released_resize():
    grid = VideoGrid(2, 7, 11)  # 2x3 windows: 7 -> 6 (a tie goes down), 11 -> 12
    attn = layer(
        LocalWindowAttention(
            DIM, HEADS, 0, padding=Padding("interpolate"), windows=WindowOptions(counts=[[2, 3]], rope="window")
        )
    )
    x = inputs(grid)
    work = VideoGrid(2, 6, 12)
    expected = resize(per_window_full(attn, resize(x, grid, 6, 12), work, 2, 3), work, 7, 11)
    torch.testing.assert_close(pre_o(attn, x, grid), expected, rtol=1e-5, atol=1e-5)


def test_nearest_multiple_matches_release_examples():
    assert [nearest_multiple(s, m) for s, m in [(68, 5), (34, 3), (135, 4), (67, 2), (67, 3), (2, 4), (6, 4)]] == [
        70,
        33,
        136,
        66,
        66,
        4,
        4,
    ]


#################################################################################
#                              Swin shifted windows                             #
#################################################################################


def swin_ids(grid: VideoGrid, nh: int, nw: int) -> torch.Tensor:
    """Swin's cyclic shift by half a window plus its region mask, as ids."""
    _, r, c = coords(grid)
    ids = []
    for pos, size, n in ((r, grid.h, nh), (c, grid.w, nw)):
        win, s = size // n, (size // n) // 2
        rolled = (pos - s) % size
        region = (rolled >= size - win).long() + (rolled >= size - s).long()
        ids += [rolled // win, region]
    return ((ids[0] * 3 + ids[1]) * 100 + ids[2]) * 3 + ids[3]


@pytest.mark.parametrize("grid,nh,nw", [(VideoGrid(2, 8, 8), 2, 2), (VideoGrid(1, 9, 12), 3, 2)])
def test_swin_shifted_windows_match_masked_cyclic_shift(grid, nh, nw):
    attn = layer(SwinAttention(DIM, HEADS, 1, windows=WindowOptions(counts=[[nh, nw]], shifts=[False, True])))
    assert attn.strategy.shifted
    x = inputs(grid)
    expected = masked_reference(attn, x, grid, [swin_ids(grid, nh, nw)])
    torch.testing.assert_close(pre_o(attn, x, grid), expected, rtol=1e-5, atol=1e-5)


def test_swin_unshifted_layer_equals_local_windows():
    grid = VideoGrid(2, 8, 8)
    x, ctx = inputs(grid), make_ctx(grid)
    swin = layer(SwinAttention(DIM, HEADS, 0, windows=WindowOptions(counts=[[2, 2]], shifts=[False, True])))
    local = layer(LocalWindowAttention(DIM, HEADS, 0, windows=WindowOptions(counts=[[2, 2]])))
    torch.testing.assert_close(swin(x, ctx), local(x, ctx))
    assert "shifted=False" in repr(swin.strategy) and "windows=2x2" in repr(swin.strategy)


#################################################################################
#                              T3 multi-scale windows                           #
#################################################################################


def test_t3_one_window_equals_full_attention():
    grid = VideoGrid(3, 4, 6)
    x, ctx = inputs(grid), make_ctx(grid)
    expected = layer(FullAttention(DIM, HEADS, 0))(x, ctx)
    torch.testing.assert_close(
        layer(MultiScaleWindowAttention(DIM, HEADS, 0, windows=WindowOptions(counts=[[1, 1, 1]])))(x, ctx), expected
    )


@pytest.mark.parametrize("layer_idx,counts", [(0, (2, 1, 1)), (1, (1, 2, 3)), (2, (3, 2, 2))])
def test_t3_close_and_remote_windows_averaged(layer_idx, counts):
    grid = VideoGrid(6, 4, 6)
    attn = layer(
        MultiScaleWindowAttention(
            DIM, HEADS, layer_idx, windows=WindowOptions(counts=[[2, 1, 1], [1, 2, 3], [3, 2, 2]])
        )
    )
    assert attn.strategy.counts == counts
    t, r, c = coords(grid)
    n = counts
    close = ((t // (grid.t // n[0])) * n[1] + r // (grid.h // n[1])) * n[2] + c // (grid.w // n[2])
    remote = ((t % n[0]) * n[1] + r % n[1]) * n[2] + c % n[2]
    x = inputs(grid)
    expected = masked_reference(attn, x, grid, [close, remote])
    torch.testing.assert_close(pre_o(attn, x, grid), expected, rtol=1e-5, atol=1e-5)
    assert not list(attn.strategy.parameters())


def test_t3_rejects_non_dividing_counts():
    grid = VideoGrid(5, 4, 6)
    attn = layer(MultiScaleWindowAttention(DIM, HEADS, 0, windows=WindowOptions(counts=[[2, 2, 2]])))
    with pytest.raises(ValueError, match=r"token grid 5x4x6 .* window counts 2x2x2 of layer 0"):
        attn(inputs(grid), make_ctx(grid))


def test_bad_window_options_raise():
    with pytest.raises(ValueError, match=r"windows.counts entry \[4\] must be 2 or 3 positive"):
        WindowOptions(counts=[[4]])
    with pytest.raises(ValueError, match=r"windows.counts \[\[1, 4, 4\]\]: this strategy takes 2 counts per layer"):
        LocalWindowAttention(DIM, HEADS, 0, windows=WindowOptions(counts=[[1, 4, 4]]))
    with pytest.raises(ValueError, match="padding.policy='zeros' is not supported"):
        Padding("zeros")
    with pytest.raises(ValueError, match="windows.rope='relative' is not supported"):
        WindowOptions(counts=[[4, 4]], rope="relative")
    with pytest.raises(ValueError, match="T3 windows keep global RoPE and do not shift"):
        MultiScaleWindowAttention(DIM, HEADS, 0, windows=WindowOptions(counts=[[1, 2, 2]], shifts=[True]))
    with pytest.raises(ValueError, match="windows.counts is empty"):
        WindowOptions(counts=[])
