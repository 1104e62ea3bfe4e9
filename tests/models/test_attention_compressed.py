"""Compressed global and hierarchical branches, their LoRA deltas and resampling, against references."""

import pytest
import torch
import torch.nn.functional as F
from test_attention_windows import DIM, HEADS, inputs, layer, make_ctx, masked_reference, pre_o, resize, window_ids

from ultragen.models.attention import CompressionOptions, FullAttention, LoRAOptions, Padding, VideoGrid, WindowOptions
from ultragen.models.attention.global_compressed import (
    DepthwiseConv3d,
    DepthwiseConv3dFunction,
    GlobalCompressedAttention,
)
from ultragen.models.attention.hierarchical import HierarchicalAttention
from ultragen.models.lora import LoRA, DomainLoRA
from ultragen.models.rope import RotaryTables, apply_rope


def pooled(x: torch.Tensor, grid: VideoGrid, k: int) -> torch.Tensor:
    """Per-frame k×k average pooling of x (B, N, C) -> (B, N / k², C)."""
    b = x.shape[0]
    planes = x.view(b * grid.t, grid.h, grid.w, DIM).permute(0, 3, 1, 2)
    return F.avg_pool2d(planes, k).permute(0, 2, 3, 1).reshape(b, -1, DIM)


@pytest.mark.parametrize("cls", [GlobalCompressedAttention, HierarchicalAttention])
def test_factor_one_identity_resampling_zero_lora_equals_full(cls):
    grid = VideoGrid(3, 5, 7)
    extra = {"windows": WindowOptions(counts=[[1, 1]])} if cls is HierarchicalAttention else {}
    x, ctx = inputs(grid), make_ctx(grid)
    got = layer(cls(DIM, HEADS, 0, compression=CompressionOptions(factor=1), lora=LoRAOptions(rank=4), **extra))(x, ctx)
    torch.testing.assert_close(got, layer(FullAttention(DIM, HEADS, 0))(x, ctx), rtol=1e-5, atol=1e-5)


def test_global_branch_is_pool_attend_upsample():
    grid, k = VideoGrid(2, 8, 12), 4
    attn = layer(
        GlobalCompressedAttention(DIM, HEADS, 0, lora=LoRAOptions(rank=4), compression=CompressionOptions(factor=k))
    )
    x = inputs(grid)
    small = VideoGrid(2, 2, 3)
    q, kk, v = attn.qkv(pooled(x, grid, k))
    rope = RotaryTables(DIM // HEADS).for_grid(*small)
    o = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (apply_rope(q, rope), apply_rope(kk, rope), v)))
    expected = resize(o.transpose(1, 2).flatten(2), small, grid.h, grid.w)
    torch.testing.assert_close(pre_o(attn, x, grid), expected, rtol=1e-5, atol=1e-5)


def test_hierarchical_branch_is_pool_then_coarse_windows():
    grid = VideoGrid(2, 8, 12)
    attn = layer(
        HierarchicalAttention(
            DIM,
            HEADS,
            1,
            lora=LoRAOptions(rank=4),
            compression=CompressionOptions(factor=2),
            windows=WindowOptions(counts=[[1, 1], [2, 3]]),
        )
    )
    assert attn.strategy.window_grid == (2, 3)
    x = inputs(grid)
    coarse = VideoGrid(2, 4, 6)
    inner = masked_reference(attn, pooled(x, grid, 2), coarse, [window_ids(coarse, 2, 3)])
    torch.testing.assert_close(pre_o(attn, x, grid), resize(inner, coarse, 8, 12), rtol=1e-5, atol=1e-5)


def test_global_key_projection_release_uses_wq():
    grid = VideoGrid(2, 4, 4)
    x = inputs(grid)
    attn = layer(
        GlobalCompressedAttention(
            DIM, HEADS, 0, lora=LoRAOptions(rank=4), compression=CompressionOptions(factor=2, key_proj="q")
        )
    )
    before = pre_o(attn, x, grid)
    with torch.no_grad():
        attn.k.weight.normal_()
    torch.testing.assert_close(pre_o(attn, x, grid), before)  # W_k unused under key_proj=q
    paper = layer(
        GlobalCompressedAttention(DIM, HEADS, 0, lora=LoRAOptions(rank=4), compression=CompressionOptions(factor=2))
    )
    assert not torch.allclose(pre_o(paper, x, grid), before)


def test_lora_defaults_and_release_init():
    torch.manual_seed(0)
    default, release = LoRA(16, 24, 4), LoRA(16, 24, 4, bias=True, init_b="kaiming")
    x = torch.randn(3, 16)
    assert default.scale == 1.0 and default.lora_A.bias is None and torch.count_nonzero(default(x)) == 0
    assert release.lora_B.bias is not None and release(x).abs().sum() > 0
    scaled = LoRA(16, 24, 4, alpha=2.0, init_b="kaiming")
    torch.testing.assert_close(scaled(x), scaled.lora_B(scaled.lora_A(x)) * 0.5)
    with pytest.raises(ValueError, match=r"lora_targets=\['q', 'ffn'\]"):
        DomainLoRA(16, 4, ["q", "ffn"])
    with pytest.raises(ValueError, match=r"lora.targets=\['q', 'ffn'\]; choose distinct names"):
        LoRAOptions(targets=["q", "ffn"])
    with pytest.raises(ValueError, match=r"lora.rank=-1 must be >= 0"):
        LoRAOptions(rank=-1)


def test_o_lora_changes_only_its_branch_output():
    grid = VideoGrid(2, 4, 4)
    attn = layer(
        GlobalCompressedAttention(
            DIM,
            HEADS,
            0,
            lora=LoRAOptions(rank=4, targets=["q", "k", "v", "o"]),
            compression=CompressionOptions(factor=2),
        )
    )
    x = inputs(grid)
    before = pre_o(attn, x, grid)
    with torch.no_grad():
        attn.strategy.lora["o"].lora_B.weight.normal_()
    assert not torch.allclose(pre_o(attn, x, grid), before)


@pytest.mark.parametrize("cls", [GlobalCompressedAttention, HierarchicalAttention])
@pytest.mark.parametrize("grid", [VideoGrid(2, 7, 11), VideoGrid(1, 13, 9)])
def test_awkward_grids_follow_the_pad_policy(cls, grid):
    x, ctx = inputs(grid), make_ctx(grid)
    message = rf"token grid {grid} .*(compression factor|coarse window grid).*padding: {{policy: replicate}}"
    with pytest.raises(ValueError, match=message):
        layer(cls(DIM, HEADS, 0, padding=Padding("error")))(x, ctx)
    for pad in ("replicate", "interpolate"):
        attn = layer(cls(DIM, HEADS, 0, padding=Padding(pad), lora=LoRAOptions(rank=4)))
        out = attn(x, ctx)
        assert out.shape == x.shape and torch.isfinite(out).all()


def test_replicate_compression_pads_edges_before_pooling():
    grid = VideoGrid(1, 5, 6)
    attn = layer(
        GlobalCompressedAttention(
            DIM,
            HEADS,
            0,
            padding=Padding("replicate"),
            lora=LoRAOptions(rank=4),
            compression=CompressionOptions(factor=2),
        )
    )
    x = inputs(grid)
    b = x.shape[0]
    planes = F.pad(x.view(b, 5, 6, DIM).permute(0, 3, 1, 2), (0, 0, 0, 1), mode="replicate")  # 6 x 6
    padded = VideoGrid(1, 6, 6)
    expected_inner = pre_o(
        layer(
            GlobalCompressedAttention(DIM, HEADS, 0, lora=LoRAOptions(rank=4), compression=CompressionOptions(factor=2))
        ),
        planes.permute(0, 2, 3, 1).reshape(b, -1, DIM),
        padded,
    )
    expected = expected_inner.view(b, 6, 6, DIM)[:, :5].reshape(b, -1, DIM)
    torch.testing.assert_close(pre_o(attn, x, grid), expected, rtol=1e-5, atol=1e-5)


def test_resampling_convs_initialisation():
    g = GlobalCompressedAttention(DIM, HEADS, 0, compression=CompressionOptions(factor=4, up_init="box"))
    assert torch.all(g.down.weight == 1 / 16) and torch.all(g.up.weight == 1 / 27)
    h = HierarchicalAttention(DIM, HEADS, 0)
    assert torch.all(h.down.weight == 1 / 4) and h.up.weight[:, 0, 1, 1, 1].eq(1).all() and h.up.weight.sum() == DIM
    assert "factor=4" in repr(g) and "windows=2x2" in repr(h)


@pytest.mark.parametrize("batch", [1, 2])
def test_depthwise_conv3d_matches_conv3d_with_gradients(batch):
    torch.manual_seed(0)
    x = torch.randn(batch, 3, 4, 5, 6, dtype=torch.float64).to(memory_format=torch.channels_last_3d).requires_grad_()
    w = torch.randn(3, 1, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(batch, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(DepthwiseConv3dFunction.apply, (x, w, b))
    conv = DepthwiseConv3d(3).double()
    with torch.no_grad():
        conv.weight.copy_(w)
        conv.bias.copy_(b[0])
    scale = torch.rand(batch, 3, dtype=torch.float64)
    expected = F.conv3d(x, w, b[0], padding=1, groups=3) * scale[:, :, None, None, None]
    torch.testing.assert_close(conv(x * scale[:, :, None, None, None], scale), expected)
