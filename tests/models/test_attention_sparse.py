"""Sliding-tile (STA) and adaptive block-sparse (NABLA) attention against brute-force references."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from test_attention_windows import DIM, HEADS, inputs, layer, make_ctx, pre_o
from torch.nn.attention.flex_attention import create_block_mask, create_mask

from ultragen.models.attention import FullAttention, Padding, VideoGrid
from ultragen.models.attention.adaptive_block import AdaptiveBlockAttention
from ultragen.models.attention.sliding_tile import (
    SlidingTileAttention,
    block_mask_from_blocks,
    tile_major_qkv,
    window_axis,
)
from ultragen.models.rope import RotaryTables, apply_rope

#################################################################################
#                           Brute-force references                              #
#################################################################################


def padded_grid(grid: VideoGrid, tile) -> VideoGrid:
    return VideoGrid(*(-(-n // s) * s for n, s in zip(grid, tile)))


def tile_ids(work: VideoGrid, tile) -> torch.Tensor:
    """(N_work,) tile index (tiles numbered in (t, h, w) order) of every token of `work`, in grid order."""
    counts = [n // s for n, s in zip(work, tile)]
    ids = torch.empty(work.numel, dtype=torch.long)
    for i, (t, h, w) in enumerate(itertools.product(*(range(n) for n in work))):
        ids[i] = ((t // tile[0]) * counts[1] + h // tile[1]) * counts[2] + w // tile[2]
    return ids


def sta_tiles(counts, window) -> torch.Tensor:
    """(T, T) bool: query tile sees key tile iff on every axis the key lies in the window of min(w, n) tiles that
    starts at the query minus w // 2, moved inward to fit in the grid."""
    tiles = list(itertools.product(*(range(n) for n in counts)))
    out = torch.zeros(len(tiles), len(tiles), dtype=torch.bool)
    for i, qt in enumerate(tiles):
        for j, kt in enumerate(tiles):
            ok = True
            for c, kc, n, w in zip(qt, kt, counts, window):
                w = min(w, n)
                start = max(0, min(c - w // 2, n - w))
                ok &= start <= kc < start + w
            out[i, j] = ok
    return out


def sta_token_mask(work: VideoGrid, tile, window) -> torch.Tensor:
    """(N_work, N_work) bool token mask of STA on `work` (grid order)."""
    ids = tile_ids(work, tile)
    tiles = sta_tiles([n // s for n, s in zip(work, tile)], window)
    return tiles[ids[:, None], ids[None, :]]


def padded_qkv(attn, x: torch.Tensor, grid: VideoGrid, work: VideoGrid):
    """q, k (global RoPE) and v of x on `grid`, edge-replicated to `work` (grid order): (B, N_work, H, D) each."""
    q, k, v = attn.qkv(x)
    rope = RotaryTables(DIM // HEADS).for_grid(*grid)
    q, k = apply_rope(q, rope), apply_rope(k, rope)
    idx = [torch.arange(n).clamp(max=m - 1) for n, m in zip(work, grid)]
    flat = ((idx[0][:, None, None] * grid.h + idx[1][None, :, None]) * grid.w + idx[2]).reshape(-1)
    return q[:, flat], k[:, flat], v[:, flat]


def real_tokens(grid: VideoGrid, work: VideoGrid) -> torch.Tensor:
    """(N_work,) bool: tokens of `work` that lie on `grid`."""
    t, h, w = torch.meshgrid(*(torch.arange(n) for n in work), indexing="ij")
    return ((t < grid.t) & (h < grid.h) & (w < grid.w)).reshape(-1)


def masked_attention(q, k, v, mask) -> torch.Tensor:
    """SDPA of (B, N, H, D) tensors under a bool mask (N, N) or (B, H, N, N) -> (B, N, H·D)."""
    out = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), attn_mask=mask)
    return out.transpose(1, 2).flatten(2)


def sta_reference(attn, x, grid: VideoGrid, tile, window) -> torch.Tensor:
    """STA before W_o: masked attention on the edge-replicated grid, padded queries dropped."""
    work = padded_grid(grid, tile)
    out = masked_attention(*padded_qkv(attn, x, grid, work), sta_token_mask(work, tile, window))
    return out[:, real_tokens(grid, work)]


def nabla_blocks(q, k, work: VideoGrid, block, threshold: float) -> torch.Tensor:
    """Kept blocks (B, H, T, T) by plain loops: mean-pooled q, k per block, softmax of their scaled products, keep
    blocks largest first until the kept mass reaches the threshold."""
    ids = tile_ids(work, block)
    q, k = q.detach(), k.detach()
    b, _, h, d = q.shape
    t = int(ids.max()) + 1
    keep = torch.zeros(b, h, t, t, dtype=torch.bool)
    for s, head in itertools.product(range(b), range(h)):
        qm = [q[s, ids == i, head].double().mean(0) for i in range(t)]
        km = [k[s, ids == j, head].double().mean(0) for j in range(t)]
        for i in range(t):
            scores = [float(qm[i] @ km[j]) / math.sqrt(d) for j in range(t)]
            top = max(scores)
            weights = [math.exp(z - top) for z in scores]
            probs = [w / sum(weights) for w in weights]
            mass = 0.0
            for p, j in sorted(zip(probs, range(t)), reverse=True):
                keep[s, head, i, j] = True
                mass += p
                assert abs(mass - threshold) > 1e-5, "test data too close to the threshold"
                if mass >= threshold:
                    break
    return keep


def nabla_reference(attn, x, grid: VideoGrid, block, threshold, window=None):
    """NABLA before W_o and its brute-force selection (B, H, T, T)."""
    work = padded_grid(grid, block)
    q, k, v = padded_qkv(attn, x, grid, work)
    keep = nabla_blocks(q, k, work, block, threshold)
    if window is not None:
        keep |= sta_tiles([n // s for n, s in zip(work, block)], window)
    ids = tile_ids(work, block)
    mask = keep[:, :, ids[:, None], ids[None, :]]  # (B, H, N_work, N_work)
    return masked_attention(q, k, v, mask)[:, real_tokens(grid, work)], keep


#################################################################################
#                        Degenerate settings: full attention                    #
#################################################################################


@pytest.mark.parametrize(
    "strategy",
    [
        lambda: SlidingTileAttention(DIM, HEADS, 0, tile=[[3, 5, 7]]),  # one tile covers the grid
        lambda: SlidingTileAttention(DIM, HEADS, 0, tile=[[1, 5, 7]], window=[[5, 1, 1]]),  # window covers all tiles
        lambda: AdaptiveBlockAttention(DIM, HEADS, 0, block=[[1, 5, 7]], threshold=[1.0]),
        lambda: AdaptiveBlockAttention(DIM, HEADS, 0, block=[[3, 1, 7]], threshold=[1.0], sliding_window=[[1, 1, 1]]),
    ],
    ids=["sta-one-tile", "sta-wide-window", "adaptive-threshold-1", "adaptive-threshold-1-window"],
)
def test_degenerate_settings_equal_full_attention(strategy):
    grid = VideoGrid(3, 5, 7)
    x, ctx = inputs(grid), make_ctx(grid)
    expected = layer(FullAttention(DIM, HEADS, 0))(x, ctx)
    torch.testing.assert_close(layer(strategy())(x, ctx), expected, rtol=1e-5, atol=1e-5)


#################################################################################
#                               Sliding tiles                                   #
#################################################################################


def test_windows_shift_inward_at_the_borders():
    expected = {  # (tiles, window) -> key tiles of each query tile
        (4, 3): [{0, 1, 2}, {0, 1, 2}, {1, 2, 3}, {1, 2, 3}],
        (5, 2): [{0, 1}, {0, 1}, {1, 2}, {2, 3}, {3, 4}],
        (2, 5): [{0, 1}, {0, 1}],
    }
    for (n, w), rows in expected.items():
        got = [set(torch.nonzero(row).flatten().tolist()) for row in window_axis(n, w)]
        assert got == rows, (n, w)


@pytest.mark.parametrize(
    "grid,layer_idx,tile,window",
    [
        (VideoGrid(4, 6, 8), 0, (1, 2, 2), (3, 3, 3)),
        (VideoGrid(4, 6, 8), 1, (2, 3, 2), (1, 1, 2)),
        (VideoGrid(6, 4, 4), 2, (2, 1, 1), (1, 3, 3)),
    ],
)
def test_sta_matches_masked_attention(grid, layer_idx, tile, window):
    tiles, windows = [[1, 2, 2], [2, 3, 2], [2, 1, 1]], [[3, 3, 3], [1, 1, 2], [1, 3, 3]]
    attn = layer(SlidingTileAttention(DIM, HEADS, layer_idx, tile=tiles, window=windows))
    assert (attn.strategy.layer_tile, attn.strategy.layer_window) == (tile, window)
    x = inputs(grid)
    torch.testing.assert_close(pre_o(attn, x, grid), sta_reference(attn, x, grid, tile, window), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("query", [0, 2 * 48 + 3 * 8 + 4, 4 * 48 - 1], ids=["corner", "interior", "far-corner"])
def test_sta_output_ignores_keys_outside_the_tile_window(query):
    grid, tile, window = VideoGrid(4, 6, 8), (1, 2, 2), (1, 3, 3)
    attn = layer(SlidingTileAttention(DIM, HEADS, 0, tile=[tile], window=[window]))
    x, ctx = inputs(grid), make_ctx(grid)
    inside = sta_token_mask(grid, tile, window)[query]
    assert inside.sum() == 36  # 3x3 tiles of 2x2 tokens, also in the corners (windows shift inward)
    base = attn(x, ctx)[:, query]
    y = x.clone()
    y[:, ~inside] += torch.randn_like(y[:, ~inside])
    torch.testing.assert_close(attn(y, ctx)[:, query], base, rtol=0, atol=1e-6)
    for key in inside.nonzero().flatten()[[0, -1]].tolist():
        z = x.clone()
        z[:, key] += 1.0
        assert not torch.allclose(attn(z, ctx)[:, query], base, atol=1e-4), key


@pytest.mark.parametrize("cls,key", [(SlidingTileAttention, "tile"), (AdaptiveBlockAttention, "block")])
def test_non_divisible_grid_error_names_grid_tile_layer_and_fix(cls, key):
    grid = VideoGrid(3, 5, 7)
    attn = layer(cls(DIM, HEADS, 2, **{key: [[2, 2, 2]]}))
    with pytest.raises(ValueError, match=rf"token grid 3x5x7 .* {key} 2x2x2 of layer 2.*set padding: {{policy: replicate}}"):
        attn(inputs(grid), make_ctx(grid))
    with pytest.raises(ValueError, match=rf"{key} 2x2x2 of layer 2"):
        attn.strategy.cost(grid)


@pytest.mark.parametrize("tile,window", [((2, 2, 2), (1, 2, 2)), ((2, 3, 4), (3, 3, 3)), ((1, 2, 3), (2, 1, 2))])
def test_sta_replicate_pads_with_edge_tokens(tile, window):
    grid = VideoGrid(3, 5, 7)
    attn = layer(SlidingTileAttention(DIM, HEADS, 0, tile=[tile], window=[window], padding=Padding("replicate")))
    x = inputs(grid)
    torch.testing.assert_close(pre_o(attn, x, grid), sta_reference(attn, x, grid, tile, window), rtol=1e-5, atol=1e-5)


#################################################################################
#                           Adaptive block selection                            #
#################################################################################


@pytest.mark.parametrize(
    "grid,block,threshold,window",
    [
        (VideoGrid(2, 6, 8), (1, 2, 4), 0.6, None),
        (VideoGrid(2, 6, 8), (1, 3, 2), 0.3, (1, 1, 3)),
        (VideoGrid(3, 5, 7), (2, 2, 4), 0.5, None),  # replicate padding to 4x6x8
    ],
)
def test_adaptive_selection_and_output_match_brute_force(grid, block, threshold, window):
    strategy = AdaptiveBlockAttention(
        DIM, HEADS, 0, block=[block], threshold=[threshold], padding=Padding("replicate"),
        sliding_window=None if window is None else [window],
    )
    attn = layer(strategy)
    x, ctx = inputs(grid) * 3.0, make_ctx(grid)  # larger inputs: a peaked pooled map
    expected, keep = nabla_reference(attn, x, grid, block, threshold, window)
    layout = strategy.layout(grid)
    q, k, _ = tile_major_qkv(attn, x, ctx, layout)
    got = strategy.select(q, k, layout)
    assert torch.equal(got, keep)
    assert 0 < keep.float().mean() < 1 and not torch.equal(keep[:, 0], keep[:, 1])  # sparse, differs per head
    torch.testing.assert_close(pre_o(attn, x, grid), expected, rtol=1e-5, atol=1e-5)


#################################################################################
#                              Gradients and cost                               #
#################################################################################


@pytest.mark.parametrize(
    "strategy",
    [
        lambda: SlidingTileAttention(DIM, HEADS, 0, tile=[[1, 2, 2]], window=[[1, 3, 3]], padding=Padding("replicate")),
        lambda: AdaptiveBlockAttention(DIM, HEADS, 0, block=[[1, 2, 4]], threshold=[0.5], padding=Padding("replicate")),
    ],
    ids=["sta", "adaptive"],
)
def test_gradients_reach_every_parameter_and_the_input(strategy):
    grid = VideoGrid(2, 5, 7)
    attn = layer(strategy())
    x = inputs(grid).requires_grad_()
    attn(x, make_ctx(grid)).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in attn.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert not list(attn.strategy.parameters())


@pytest.mark.parametrize(
    "grid,tile,window,pad",
    [
        (VideoGrid(4, 6, 8), (1, 2, 2), (3, 3, 3), "error"),
        (VideoGrid(4, 6, 8), (2, 3, 2), (1, 5, 2), "error"),
        (VideoGrid(3, 5, 7), (2, 2, 4), (2, 1, 3), "replicate"),
    ],
)
def test_sta_cost_counts_the_pairs_of_whole_tiles(grid, tile, window, pad):
    strategy = SlidingTileAttention(DIM, HEADS, 0, tile=[tile], window=[window], padding=Padding(pad))
    pairs = int(sta_token_mask(padded_grid(grid, tile), tile, window).sum())
    cost = strategy.cost(grid)
    assert cost.maps == 4.0 * pairs * DIM
    assert cost.other == 6.0 * grid.numel * DIM**2
    if pad == "error":
        assert cost.maps < FullAttention(DIM, HEADS, 0).cost(grid).maps


def test_adaptive_cost_bounds_and_counts_a_selection():
    grid, block = VideoGrid(3, 5, 7), (2, 2, 4)
    work = padded_grid(grid, block)  # 4x6x8: 2x3x2 = 12 blocks of 16 tokens
    dense = AdaptiveBlockAttention(DIM, HEADS, 0, block=[block], threshold=[1.0], padding=Padding("replicate"))
    assert dense.cost(grid).maps == 4.0 * work.numel**2 * DIM
    assert dense.cost(grid).other == 6.0 * grid.numel * DIM**2  # threshold 1: no pooled map
    strategy = AdaptiveBlockAttention(DIM, HEADS, 0, block=[block], threshold=[0.5], padding=Padding("replicate"))
    attn = layer(strategy)
    x = inputs(grid) * 3.0
    _, keep = nabla_reference(attn, x, grid, block, 0.5)
    ids = tile_ids(work, block)
    pairs_per_head = keep[:, :, ids[:, None], ids[None, :]].sum()  # attended (query, key) pairs, all samples and heads
    cost = strategy.selection_cost(grid, keep)
    pooled = 2.0 * work.numel * DIM + 2.0 * 12**2 * DIM  # block means of q and k, pooled scores
    assert cost.maps == pytest.approx(4.0 * float(pairs_per_head) * (DIM // HEADS) / x.shape[0])
    assert cost.other == 6.0 * grid.numel * DIM**2 + pooled
    assert strategy.cost(grid).other == cost.other and cost.maps < strategy.cost(grid).maps


#################################################################################
#                            Options, names, masks                              #
#################################################################################


def test_bad_options_raise():
    with pytest.raises(ValueError, match=r"tile entry \[4, 8\] must be 3 positive token counts"):
        SlidingTileAttention(DIM, HEADS, 0, tile=[[4, 8]])
    with pytest.raises(ValueError, match="window is empty"):
        SlidingTileAttention(DIM, HEADS, 0, window=[])
    with pytest.raises(ValueError, match="padding policy interpolate would resize tokens across tiles"):
        SlidingTileAttention(DIM, HEADS, 0, padding=Padding("interpolate"))
    with pytest.raises(ValueError, match=r"threshold entry 1.5 is not in \(0, 1\]"):
        AdaptiveBlockAttention(DIM, HEADS, 0, threshold=[0.9, 1.5])
    with pytest.raises(ValueError, match=r"threshold entry 0.0 is not in \(0, 1\]"):
        AdaptiveBlockAttention(DIM, HEADS, 0, threshold=[0])
    with pytest.raises(ValueError, match=r"sliding_window entry \[0, 1, 1\] must be 3 positive block counts"):
        AdaptiveBlockAttention(DIM, HEADS, 0, sliding_window=[[0, 1, 1]])


def test_options_cycle_per_layer_and_show_in_repr():
    sta = SlidingTileAttention(DIM, HEADS, 3, tile=[[1, 2, 2], [2, 4, 4]], window=[[3, 3, 3]], padding=Padding("replicate"))
    assert sta.describe() == "SlidingTileAttention[tile 2x4x4, window 3x3x3]"
    assert "tile=2x4x4 (cycle [1x2x2, 2x4x4])" in repr(sta) and "padding=replicate" in repr(sta)
    nabla = AdaptiveBlockAttention(
        DIM, HEADS, 2, block=[[1, 2, 4]], threshold=[0.9, 0.8, 0.7], sliding_window=[[1, 3, 3]]
    )
    assert nabla.describe() == "AdaptiveBlockAttention[block 1x2x4, threshold 0.7, window 1x3x3]"
    assert "threshold=0.7 (cycle [0.9, 0.8, 0.7])" in repr(nabla)


def test_flex_rejects_tiles_its_kernels_cannot_use():
    grid = VideoGrid(2, 6, 8)
    attn = layer(SlidingTileAttention(DIM, HEADS, 0, tile=[[1, 3, 4]], backend="flex"))
    with pytest.raises(ValueError, match=r"tile 1x3x4 of layer 0 has 12 tokens.*multiple of 128 or a power of two"):
        attn(inputs(grid), make_ctx(grid))


@pytest.mark.parametrize("shape", [(1, 1), (2, 3)])
def test_block_mask_equals_create_block_mask(shape):
    torch.manual_seed(0)
    t, volume = 6, 16
    keep = torch.rand(*shape, t, t) < 0.4
    keep |= torch.eye(t, dtype=torch.bool)
    n = t * volume
    mask = block_mask_from_blocks(keep, volume)

    def rule(b, h, q_idx, kv_idx):
        return keep[b % shape[0], h % shape[1], q_idx // volume, kv_idx // volume]

    ref = create_block_mask(rule, shape[0], shape[1], n, n, device="cpu", BLOCK_SIZE=volume)
    assert torch.equal(mask.to_dense(), ref.to_dense())
    assert torch.equal(mask.full_kv_num_blocks, ref.full_kv_num_blocks) and not mask.kv_num_blocks.any()
    dense = keep.repeat_interleave(volume, -2).repeat_interleave(volume, -1)
    assert torch.equal(create_mask(mask.mask_mod, shape[0], shape[1], n, n, device="cpu"), dense)


#################################################################################
#                        FlexAttention path (forward on CPU)                    #
#################################################################################

FLEX_CASES = [
    (SlidingTileAttention, dict(tile=[[1, 4, 4]], window=[[3, 1, 3]])),
    (SlidingTileAttention, dict(tile=[[2, 4, 4]], window=[[1, 3, 3]], padding=Padding("replicate"))),
    (AdaptiveBlockAttention, dict(block=[[2, 4, 4]], threshold=[0.5], padding=Padding("replicate"))),
    (AdaptiveBlockAttention, dict(block=[[1, 4, 4]], threshold=[0.3], sliding_window=[[1, 1, 3]])),
]
FLEX_IDS = ["sta", "sta-replicate", "adaptive-replicate", "adaptive-window"]


@pytest.mark.slow
@pytest.mark.parametrize("cls,options", FLEX_CASES, ids=FLEX_IDS)
def test_flex_forward_matches_the_reference_on_cpu(cls, options):
    """Compiled FlexAttention runs forward only on CPU; this pins the BlockMask path without a GPU."""
    grid = VideoGrid(3, 8, 12)
    x = inputs(grid)
    with torch.no_grad():
        ref = pre_o(layer(cls(DIM, HEADS, 0, **options)), x, grid)
        got = pre_o(layer(cls(DIM, HEADS, 0, backend="flex", **options)), x, grid)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


#################################################################################
#                               GPU twins                                       #
#################################################################################

GPU_CASES = [
    (SlidingTileAttention, dict(tile=[[1, 4, 4]], window=[[3, 3, 3]])),
    (SlidingTileAttention, dict(tile=[[2, 8, 8]], window=[[3, 1, 3]], padding=Padding("replicate"))),
    (AdaptiveBlockAttention, dict(block=[[1, 4, 8]], threshold=[0.7], padding=Padding("replicate"))),
    (AdaptiveBlockAttention, dict(block=[[2, 8, 8]], threshold=[0.5], sliding_window=[[1, 1, 3]], padding=Padding("replicate"))),
]
GPU_IDS = ["sta-16", "sta-128-replicate", "adaptive-32-replicate", "adaptive-128-window"]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)], ids=["fp32", "bf16"])
@pytest.mark.parametrize("cls,options", GPU_CASES, ids=GPU_IDS)
def test_flex_path_matches_the_reference_on_cuda(cls, options, dtype, atol):
    grid = VideoGrid(5, 12, 20)
    x = inputs(grid).cuda().to(dtype)
    outs, grads = [], []
    for backend in ("sdpa", "flex"):
        attn = layer(cls(DIM, HEADS, 0, backend=backend, **options)).cuda().to(dtype)
        xi = x.clone().requires_grad_()
        out = pre_o(attn, xi, grid)
        out.float().square().sum().backward()
        outs.append(out.float())
        grads.append(xi.grad.float())
    torch.testing.assert_close(outs[1], outs[0], atol=atol, rtol=atol)
    if dtype == torch.float32:
        torch.testing.assert_close(grads[1], grads[0], atol=1e-3, rtol=1e-3)
