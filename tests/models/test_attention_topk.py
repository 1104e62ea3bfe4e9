"""TopKBlockAttention (VSA-style) against brute-force references: selection, fine/coarse output, locality, padding,
gradients, cost, the FlexAttention path (eager on CPU; compiled in the GPU twins)."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from test_attention_windows import DIM, HEADS, inputs, layer, make_ctx, pre_o
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

import ultragen.models.attention.base as attention_base
from ultragen.models.attention import AttentionContext, FullAttention, Padding, VideoGrid
from ultragen.models.attention.sliding_tile import block_mask_from_blocks
from ultragen.models.attention.topk_block import TopKBlockAttention, cube_means
from ultragen.models.blocks import SelfAttention
from ultragen.models.rope import RotaryTables, apply_rope
from ultragen.models.wan import sinusoidal_embedding

HEAD_DIM = DIM // HEADS


def topk(**options) -> TopKBlockAttention:
    return TopKBlockAttention(DIM, HEADS, 0, **options)


def gated(strategy: TopKBlockAttention, seed: int = 3) -> TopKBlockAttention:
    """The strategy with a non-zero coarse gate."""
    torch.manual_seed(seed)
    torch.nn.init.normal_(strategy.gate.weight, std=0.3)
    torch.nn.init.normal_(strategy.gate.bias, std=0.3)
    return strategy


#################################################################################
#                            Brute-force reference                              #
#################################################################################


def cube_members(grid: VideoGrid, cube) -> list[list[tuple[int, bool]]]:
    """Per cube, in (t, h, w) cube order: (source token, is-original) of each slot, padded positions clamped."""
    counts = [-(-n // c) for n, c in zip(grid, cube)]
    cubes = []
    for corner in itertools.product(*(range(n) for n in counts)):
        slots = []
        for pos in itertools.product(*(range(i * c, (i + 1) * c) for i, c in zip(corner, cube))):
            t, h, w = (min(p, n - 1) for p, n in zip(pos, grid))
            slots.append(((t * grid.h + h) * grid.w + w, pos == (t, h, w)))
        cubes.append(slots)
    return cubes


def rotated(attn, x: torch.Tensor, grid: VideoGrid):
    """q, k (global RoPE) and v in token order, (B, N, H, D)."""
    q, k, v = attn.qkv(x)
    rope = RotaryTables(HEAD_DIM).for_grid(*grid)
    return apply_rope(q, rope), apply_rope(k, rope), v


@torch.no_grad()
def brute_force(attn, x: torch.Tensor, grid: VideoGrid, cube, k: int):
    """(selected key cubes per (b, h, query cube) as sets, output before W_o) from loops over cubes and a dense mask
    over the padded tokens."""
    q, kk, v = rotated(attn, x, grid)
    cubes = cube_members(grid, cube)
    m, (b, _, h, d) = len(cubes), q.shape
    src = torch.tensor([s for slots in cubes for s, _ in slots])
    mean = {name: torch.stack([t[:, [s for s, _ in slots]].mean(1) for slots in cubes], 1)  # (B, M, H, D)
            for name, t in (("q", q), ("k", kk), ("v", v))}
    selected, scores = {}, torch.empty(b, h, m, m)
    for bi, hi, i in itertools.product(range(b), range(h), range(m)):
        for j in range(m):
            scores[bi, hi, i, j] = float(mean["q"][bi, i, hi] @ mean["k"][bi, j, hi]) / d**0.5
        selected[bi, hi, i] = set(sorted(range(m), key=lambda j: -scores[bi, hi, i, j])[:k])
    cube_of = torch.tensor([c for c, slots in enumerate(cubes) for _ in slots])
    mask = torch.zeros(b, h, len(src), len(src), dtype=torch.bool)
    for (bi, hi, i), keys in selected.items():
        mask[bi, hi, cube_of == i] = torch.isin(cube_of, torch.tensor(sorted(keys)))[None]
    padded = [t[:, src].transpose(1, 2) for t in (q, kk, v)]  # (B, H, P, D)
    fine = F.scaled_dot_product_attention(*padded, attn_mask=mask).transpose(1, 2).flatten(2)  # (B, P, C)
    original = torch.tensor([o for slots in cubes for _, o in slots])
    out = torch.empty(b, grid.numel, h * d)
    out[:, src[original]] = fine[:, original]
    coarse = (scores.softmax(-1) @ mean["v"].transpose(1, 2)).transpose(1, 2).flatten(2)  # (B, M, C)
    token_cube = torch.empty(grid.numel, dtype=torch.long)
    token_cube[src[original]] = cube_of[original]
    return selected, out, coarse[:, token_cube]


def strategy_selection(attn, x: torch.Tensor, grid: VideoGrid) -> torch.Tensor:
    """The strategy's own selected key cubes (B, H, M, k)."""
    s = attn.strategy
    layout, q, k, _ = s.cube_qkv(attn, x, make_ctx(grid, x.shape[0]))
    qc, kc = cube_means(q, layout), cube_means(k, layout)
    return s.select(qc @ kc.transpose(-1, -2) * s.head_dim**-0.5)


#################################################################################
#                                 Correctness                                   #
#################################################################################


@pytest.mark.parametrize("grid,cube", [(VideoGrid(2, 4, 6), (1, 2, 3)), (VideoGrid(3, 4, 4), (3, 2, 2)),
                                       (VideoGrid(2, 4, 6), (2, 4, 6))])
def test_all_cubes_without_gate_equals_full_attention(grid, cube):
    x, ctx = inputs(grid), make_ctx(grid)
    expected = layer(FullAttention(DIM, HEADS, 0))(x, ctx)
    got = layer(topk(cube=[cube], k=[1000], coarse_gate=False))(x, ctx)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


CASES = [  # grid, cube, k, pad
    (VideoGrid(4, 4, 6), (2, 2, 3), 3, "error"),
    (VideoGrid(2, 6, 4), (1, 2, 2), 4, "error"),
    (VideoGrid(3, 5, 7), (2, 2, 2), 5, "replicate"),  # padded to 4x6x8: 24 cubes
]


@pytest.mark.parametrize("grid,cube,k,pad", CASES)
def test_selection_matches_brute_force(grid, cube, k, pad):
    attn = layer(topk(cube=[cube], k=[k], padding=Padding(pad)))
    x = inputs(grid)
    expected, _, _ = brute_force(attn, x, grid, cube, k)
    selected = strategy_selection(attn, x, grid)
    assert selected.shape[-1] == k
    got = {(b, h, i): set(selected[b, h, i].tolist()) for b, h, i in itertools.product(*map(range, selected.shape[:3]))}
    assert got == expected


@pytest.mark.parametrize("grid,cube,k,pad", CASES)
@pytest.mark.parametrize("with_gate", [False, True])
def test_fine_plus_gated_coarse_matches_dense_reference(grid, cube, k, pad, with_gate):
    """Fine attention over the selected cubes (a dense mask on the padded tokens), plus gate(x) · coarse output
    broadcast per cube; under `replicate` the padded edge copies are keys and their outputs are dropped."""
    strategy = topk(cube=[cube], k=[k], padding=Padding(pad), coarse_gate=with_gate)
    attn = layer(gated(strategy) if with_gate else strategy)
    x = inputs(grid)
    _, fine, coarse = brute_force(attn, x, grid, cube, k)
    expected = fine + strategy.gate(x) * coarse if with_gate else fine
    torch.testing.assert_close(pre_o(attn, x, grid), expected, rtol=1e-5, atol=1e-5)


def test_fresh_gate_starts_as_pure_fine_attention():
    grid = VideoGrid(2, 4, 6)
    x, ctx = inputs(grid), make_ctx(grid)
    with_gate = layer(topk(cube=[[1, 2, 3]], k=[3]))
    without = layer(topk(cube=[[1, 2, 3]], k=[3], coarse_gate=False))
    torch.testing.assert_close(with_gate(x, ctx), without(x, ctx), rtol=0, atol=0)
    assert {n for n, _ in with_gate.named_parameters() if n.startswith("strategy.")} == {
        "strategy.gate.weight", "strategy.gate.bias"}


def cube_tokens(grid: VideoGrid, cube, index: int) -> torch.Tensor:
    """Source tokens of cube `index` (grid divisible by cube), from coordinates."""
    counts = [n // c for n, c in zip(grid, cube)]
    corner = [index // (counts[1] * counts[2]), index // counts[2] % counts[1], index % counts[2]]
    t, h, w = torch.meshgrid(*(torch.arange(i * c, (i + 1) * c) for i, c in zip(corner, cube)), indexing="ij")
    return ((t * grid.h + h) * grid.w + w).reshape(-1)


def test_key_outside_every_selected_cube_does_not_reach_the_query_cube():
    grid, cube = VideoGrid(2, 4, 4), (1, 2, 2)  # 8 cubes, 2 kept per query cube and head
    attn = layer(topk(cube=[cube], k=[2], coarse_gate=False))
    x, ctx = inputs(grid, batch=1), make_ctx(grid, 1)
    selected = strategy_selection(attn, x, grid)[0, :, 0]  # (H, k): key cubes of query cube 0, every head
    outside = next(j for j in range(8) if j not in selected.tolist() and j != 0)
    queries, token = cube_tokens(grid, cube, 0), cube_tokens(grid, cube, outside)[1]
    y = x.clone()
    y[0, token] += 0.3 * torch.randn(DIM)
    assert torch.equal(strategy_selection(attn, y, grid)[0, :, 0], selected)  # the coarse stage still picks the same
    a, b = attn(x, ctx), attn(y, ctx)
    torch.testing.assert_close(a[:, queries], b[:, queries], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, token], b[:, token])
    y = x.clone()  # control: a key inside a selected cube does reach the query cube
    y[0, cube_tokens(grid, cube, int(selected[0, 0]))[1]] += 0.3 * torch.randn(DIM)
    assert not torch.allclose(attn(y, ctx)[:, queries], a[:, queries])


def test_gradients_reach_the_gate_the_shared_weights_and_x():
    grid = VideoGrid(3, 5, 7)
    attn = layer(gated(topk(cube=[[2, 2, 2]], k=[5], padding=Padding("replicate"))))
    x = inputs(grid).requires_grad_(True)
    out = attn(x, make_ctx(grid))
    (out * torch.randn_like(out)).sum().backward()
    for name, p in attn.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


#################################################################################
#                              Padding and options                              #
#################################################################################


@pytest.mark.parametrize("grid", [VideoGrid(3, 4, 4), VideoGrid(2, 5, 4), VideoGrid(2, 4, 7)])
def test_pad_error_names_grid_cube_and_fix(grid):
    attn = layer(topk(cube=[[2, 2, 2]], k=[4]))
    with pytest.raises(ValueError, match=rf"token grid {grid} \(TxHxW\) is not divisible by the cube 2x2x2 of layer 0"
                                         r".*set padding: {policy: replicate}"):
        attn(inputs(grid), make_ctx(grid))
    with pytest.raises(ValueError, match="not divisible by the cube 2x2x2"):
        attn.strategy.cost(grid)


def test_replicate_on_a_divisible_grid_pads_nothing():
    grid = VideoGrid(2, 4, 6)
    x, ctx = inputs(grid), make_ctx(grid)
    error = layer(gated(topk(cube=[[1, 2, 3]], k=[3])))
    replicate = layer(topk(cube=[[1, 2, 3]], k=[3], padding=Padding("replicate")))
    replicate.load_state_dict(error.state_dict())
    torch.testing.assert_close(replicate(x, ctx), error(x, ctx), rtol=0, atol=0)
    assert replicate.strategy.layout(grid).work == grid


def test_cube_and_k_cycle_per_layer():
    s = TopKBlockAttention(DIM, HEADS, 3, cube=[[4, 4, 4], [1, 2, 2]], k=[8, 16, 32])
    assert (s.cube, s.top_k) == ((1, 2, 2), 8)
    assert s.describe() == "TopKBlockAttention[1x2x2 k=8]"
    assert "cube=1x2x2 (cycle [4x4x4, 1x2x2]), k=8 (cycle [8, 16, 32]), padding=error, coarse_gate=True" in repr(s)


def test_bad_options_raise():
    with pytest.raises(ValueError, match=r"cube entry \[4, 4\] must be 3 positive"):
        topk(cube=[[4, 4]])
    with pytest.raises(ValueError, match="cube is empty"):
        topk(cube=[])
    with pytest.raises(ValueError, match=r"k=0 must be positive"):
        topk(k=[4, 0])
    with pytest.raises(ValueError, match="k is empty"):
        topk(k=[])
    with pytest.raises(ValueError, match="padding policy interpolate would resize tokens across cubes"):
        topk(padding=Padding("interpolate"))
    grid = VideoGrid(2, 4, 4)
    attn = layer(topk(cube=[[1, 2, 3]], k=[2], padding=Padding("replicate"), backend="flex"))
    with pytest.raises(ValueError, match=r"cube 1x2x3 has 6 tokens, which FlexAttention cannot use as a block"):
        attn(inputs(grid), make_ctx(grid))


#################################################################################
#                                     Cost                                      #
#################################################################################


@pytest.mark.parametrize("grid,cube,k,pad", [*CASES, (VideoGrid(2, 4, 6), (1, 2, 3), 100, "error")])
@pytest.mark.parametrize("with_gate", [False, True])
def test_cost_counts_the_pairs_of_the_implied_dense_mask(grid, cube, k, pad, with_gate):
    attn = layer(topk(cube=[cube], k=[k], padding=Padding(pad), coarse_gate=with_gate))
    x = inputs(grid, batch=1)
    selected, _, _ = brute_force(attn, x, grid, cube, k)
    cubes = cube_members(grid, cube)
    size = {i: len(slots) for i, slots in enumerate(cubes)}
    pairs = sum(size[i] * size[j] for (_, h, i), keys in selected.items() if h == 0 for j in keys)  # one head
    n, padded, d = grid.numel, sum(size.values()), DIM
    other = 6 * n * d * d + 3 * padded * d + (2 * n * d * d + 2 * n * d if with_gate else 0)
    cost = attn.strategy.cost(grid)
    assert cost.maps == 4 * d * (pairs + len(cubes) ** 2)
    assert cost.other == other


#################################################################################
#                            FlexAttention path                                 #
#################################################################################


def test_block_mask_is_create_block_masks_without_the_dense_mask():
    torch.manual_seed(0)
    b, h, m, k, vol = 2, 2, 12, 4, 16
    selected = torch.stack([torch.randperm(m)[:k] for _ in range(b * h * m)]).view(b, h, m, k)
    allowed = torch.zeros(b, h, m, m, dtype=torch.bool).scatter_(-1, selected, True)
    mask = block_mask_from_blocks(allowed, vol)
    expected = create_block_mask(lambda bi, hi, qi, ki: allowed[bi, hi, qi // vol, ki // vol], b, h, m * vol,
                                 m * vol, device="cpu", BLOCK_SIZE=vol)
    assert torch.equal(mask.to_dense(), expected.to_dense())
    assert torch.equal(mask.kv_num_blocks, expected.kv_num_blocks)  # no partial blocks
    assert torch.equal(mask.full_kv_num_blocks, expected.full_kv_num_blocks)
    assert torch.equal(mask.full_kv_indices[..., :k], expected.full_kv_indices[..., :k])
    assert torch.equal(mask.full_q_num_blocks, expected.full_q_num_blocks)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("with_gate", [False, True])
def test_flex_path_equals_the_reference_path_on_cpu(monkeypatch, with_gate):
    """The `flex` path with eager FlexAttention (forward only on CPU; it applies the mask_mod per element)."""
    monkeypatch.setattr(attention_base, "compiled_flex_attention", lambda: flex_attention)
    grid = VideoGrid(3, 4, 8)  # 2x2x4 cubes: t pads 3 -> 4, 8 cubes of 16 tokens
    options = dict(cube=[[2, 2, 4]], k=[3], padding=Padding("replicate"), coarse_gate=with_gate)
    strategy = topk(**options)
    reference = layer(gated(strategy) if with_gate else strategy)
    flex = layer(topk(**options, backend="flex"))
    flex.load_state_dict(reference.state_dict())
    x, ctx = inputs(grid), make_ctx(grid)
    with torch.no_grad():
        torch.testing.assert_close(flex(x, ctx), reference(x, ctx), rtol=1e-5, atol=1e-5)


#################################################################################
#                                  GPU twins                                    #
#################################################################################


def cuda_pair(dtype: torch.dtype, dim: int = 128, heads: int = 2):
    """Reference (`math`) and `flex` layers with identical weights on CUDA, and inputs on a grid that pads."""
    grid = VideoGrid(5, 8, 12)  # 4x4x4 cubes: t pads 5 -> 8, 2x2x3 = 12 cubes
    layers = []
    for backend in ("math", "flex"):
        torch.manual_seed(0)
        strategy = TopKBlockAttention(dim, heads, 0, backend=backend, cube=[[4, 4, 4]], k=[4], padding=Padding("replicate"))
        torch.nn.init.normal_(strategy.gate.weight, std=0.05)
        layers.append(SelfAttention(dim, heads, strategy).to("cuda", dtype))
    torch.manual_seed(1)
    x = torch.randn(2, grid.numel, dim, device="cuda", dtype=dtype)
    ctx = AttentionContext(grid, RotaryTables(dim // heads),
                           sinusoidal_embedding(256, torch.tensor([10.0, 900.0])).float().cuda())
    return *layers, x, ctx


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)])
def test_flex_path_matches_the_reference_on_cuda(dtype, atol):
    reference, flex, x, ctx = cuda_pair(dtype)
    with torch.no_grad():
        torch.testing.assert_close(flex(x, ctx).float(), reference(x, ctx).float(), atol=atol, rtol=atol)


@pytest.mark.gpu
def test_flex_path_gradients_match_the_reference_on_cuda():
    reference, flex, x, ctx = cuda_pair(torch.float32)
    grads = []
    for attn in (reference, flex):
        xi = x.clone().requires_grad_(True)
        out = attn(xi, ctx)
        torch.manual_seed(2)
        (out * torch.randn_like(out)).sum().backward()
        grads.append([xi.grad, *(p.grad for p in attn.parameters())])
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, atol=1e-3, rtol=1e-3)
