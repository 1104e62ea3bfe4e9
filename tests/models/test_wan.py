import pytest
import torch

from ultragen.models.attention import (
    AttentionStrategy,
    CompressionOptions,
    FullAttention,
    LoRAOptions,
    Padding,
    VideoGrid,
    WindowOptions,
    attention,
)
from ultragen.models.rope import RotaryTables, apply_rope
from ultragen.models.wan import WanDiT, masked_mean, sincos_position_embedding, sinusoidal_embedding

TINY = dict(dim=32, ffn_dim=64, num_heads=2, num_layers=2, freq_dim=16)


def tiny_dit(**kw) -> WanDiT:
    torch.manual_seed(0)
    net = WanDiT(8, 12, **{**TINY, **kw})
    for p in net.head.parameters():  # Wan zero-inits the head; make outputs informative for tests
        torch.nn.init.normal_(p, std=0.1)
    return net


@pytest.mark.parametrize("frames,height,width", [(1, 2, 2), (3, 10, 14), (5, 6, 22), (2, 14, 4)])
def test_forward_shapes_on_awkward_grids(frames, height, width):
    net = tiny_dit()
    x = torch.randn(2, 8, frames, height, width)
    out = net(x, torch.tensor([0.0, 999.0]), torch.randn(2, 5, 12))
    assert out.shape == x.shape
    assert torch.isfinite(out).all()


def test_deterministic_for_fixed_seed():
    x, t, c = torch.randn(1, 8, 3, 6, 10), torch.tensor([500.0]), torch.randn(1, 4, 12)
    a, b = tiny_dit()(x, t, c), tiny_dit()(x, t, c)
    assert torch.equal(a, b)
    assert not torch.equal(a, tiny_dit()(x, t + 100, c))


def test_bad_inputs_raise_named_errors():
    net = tiny_dit()
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        net(torch.randn(1, 8, 3, 7, 10), torch.tensor([1.0]), torch.randn(1, 4, 12))
    with pytest.raises(ValueError, match="expects in_dim=8"):
        net(torch.randn(1, 4, 3, 6, 10), torch.tensor([1.0]), torch.randn(1, 4, 12))
    with pytest.raises(ValueError, match=r"full_attention_layers \[5\] out of range"):
        tiny_dit(full_attention_layers=[5])
    with pytest.raises(ValueError, match="unknown attention backend 'triton'"):
        FullAttention(32, 2, 0, backend="triton")
    q = torch.randn(1, 4, 2, 8)
    with pytest.raises(ValueError, match="a block mask needs attention backend 'flex', not 'sdpa'"):
        attention(q, q, q, backend="sdpa", block_mask=object())


def test_full_attention_layers_and_factory():
    calls = []

    class Recording(FullAttention):
        def __init__(self, dim, num_heads, layer_idx, freq_dim, backend):
            calls.append(layer_idx)
            super().__init__(dim, num_heads, layer_idx, freq_dim, backend)

    net = tiny_dit(num_layers=4, attention=Recording, full_attention_layers=[0, 3], freq_dim=24, attention_backend="math")
    assert calls == [1, 2]
    # the network supplies its freq_dim and one backend to every strategy and cross-attention
    assert {b.self_attn.strategy.freq_dim for b in net.blocks} == {24}
    backends = {id(m.backend) for b in net.blocks for m in (b.self_attn.strategy, b.cross_attn)}
    assert backends == {id(net.attention_backend)} and net.attention_backend.name == "math"
    assert [type(b.self_attn.strategy) for b in net.blocks] == [FullAttention, Recording, Recording, FullAttention]
    assert all(isinstance(b.self_attn.strategy, AttentionStrategy) for b in net.blocks)


def test_negative_full_attention_layers_count_from_the_last_block():
    """[0, 1, 2, -3, -2, -1] means the first and last three blocks at any depth (27-29 of 30, 37-39 of 40)."""
    for layers, last in ((6, [3, 4, 5]), (8, [5, 6, 7])):
        net = tiny_dit(num_layers=layers, full_attention_layers=[0, 1, 2, -3, -2, -1])
        assert net.full_attention_layers == [0, 1, 2, *last]
    assert tiny_dit(num_layers=4, full_attention_layers=[3, -1]).full_attention_layers == [3]
    with pytest.raises(ValueError, match=r"\[-5\] out of range for num_layers=4; use indices from -4 to 3"):
        tiny_dit(num_layers=4, full_attention_layers=[0, -5])


def test_rope_matches_wan_complex_reference():
    """Wan2.1: freqs = polar(1, outer(pos, theta^(-2j/d))) per axis, concatenated, x viewed as complex pairs."""
    head_dim, grid = 24, VideoGrid(3, 4, 5)
    tables = RotaryTables(head_dim)
    d = head_dim
    dims = [d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6)]
    assert tables.axis_dims == tuple(dims)

    def params(n, dim):
        f = torch.outer(torch.arange(n), 1.0 / torch.pow(10000, torch.arange(0, dim, 2).to(torch.float64).div(dim)))
        return torch.polar(torch.ones_like(f), f)

    ft, fh, fw = params(1024, dims[0]), params(1024, dims[1]), params(1024, dims[2])
    t, h, w = grid
    freqs = torch.cat(
        [ft[:t].view(t, 1, 1, -1).expand(t, h, w, -1), fh[:h].view(1, h, 1, -1).expand(t, h, w, -1),
         fw[:w].view(1, 1, w, -1).expand(t, h, w, -1)], dim=-1).reshape(grid.numel, 1, -1)
    x = torch.randn(2, grid.numel, 3, head_dim)
    ref = torch.view_as_real(torch.view_as_complex(x.double().reshape(2, grid.numel, 3, -1, 2)) * freqs).flatten(3)
    out = apply_rope(x, tables.for_grid(*grid))
    torch.testing.assert_close(out, ref.float(), atol=1e-5, rtol=1e-5)


def test_sinusoidal_embedding_is_cos_first():
    e = sinusoidal_embedding(8, torch.tensor([0.0, 3.0]))
    assert torch.equal(e[0], torch.tensor([1.0, 1, 1, 1, 0, 0, 0, 0], dtype=torch.float64))
    torch.testing.assert_close(e[1, 0], torch.tensor(3.0, dtype=torch.float64).cos())
    torch.testing.assert_close(e[1, 5], (3.0 * torch.tensor(10000.0, dtype=torch.float64) ** -0.25).sin())


def test_attention_kernel_matches_explicit_softmax():
    q, k, v = (torch.randn(2, 7, 3, 4) for _ in range(3))
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / 2.0
    ref = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).flatten(2)
    torch.testing.assert_close(attention(q, k, v), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attention(q, k, v, backend="math"), ref, atol=1e-5, rtol=1e-5)


def test_video_grid_parse():
    assert VideoGrid.parse("21x68x120") == VideoGrid(21, 68, 120)
    assert VideoGrid(21, 68, 120).numel == 171360
    with pytest.raises(ValueError, match="TxHxW"):
        VideoGrid.parse("21x68")


def test_release_timestep_dtype_quantises_t():
    x, c = torch.randn(1, 8, 1, 4, 4), torch.randn(1, 4, 12)
    release = tiny_dit(timestep_dtype="bfloat16")
    # bf16 spacing is 4 on [512, 1024): 993.15 and 992 embed identically, float32 keeps them apart
    assert torch.equal(release(x, torch.tensor([993.15]), c), release(x, torch.tensor([992.0]), c))
    default = tiny_dit()
    assert not torch.equal(default(x, torch.tensor([993.15]), c), default(x, torch.tensor([992.0]), c))


def test_sincos_position_embedding_is_dit_style_per_axis():
    grid = VideoGrid(3, 4, 5)
    emb = sincos_position_embedding(32, grid).view(3, 4, 5, 32)
    t, h, w = emb[..., :12], emb[..., 12:22], emb[..., 22:]  # 2*(32//6) = 10 channels per spatial axis
    omega = 10000.0 ** (-torch.arange(5, dtype=torch.float64) / 5)
    want_w = torch.cat([torch.outer(torch.arange(5.0, dtype=torch.float64), omega).sin(),
                        torch.outer(torch.arange(5.0, dtype=torch.float64), omega).cos()], 1).float()
    torch.testing.assert_close(w[1, 2], want_w)
    assert torch.equal(h[0, :, 0], h[2, :, 4]) and torch.equal(t[:, 0, 0], t[:, 3, 1])  # each axis sees its index
    assert not torch.equal(h[0, 1, 0], h[0, 2, 0]) and not torch.equal(t[0, 0, 0], t[1, 0, 0])


def test_absolute_position_tells_tokens_apart_where_rope_alone_cannot():
    """On a spatially constant input every token has the same content: RoPE only rotates identical keys, so the
    attention outputs and hence the DiT output are the same at every token (patch 1x2x2); the sin-cos embedding
    breaks that."""
    x = torch.randn(1, 8, 1, 1, 1).expand(1, 8, 2, 6, 8)
    t, c = torch.tensor([999.0]), torch.randn(1, 4, 12)
    rope_only = tiny_dit()(x, t, c)
    torch.testing.assert_close(rope_only, rope_only[:, :, :1, :2, :2].repeat(1, 1, 2, 3, 4))
    with_position = tiny_dit(absolute_position=True)(x, t, c)
    assert (with_position - with_position[:, :, :1, :2, :2].repeat(1, 1, 2, 3, 4)).abs().amax() > 1e-2


def test_masked_mean_ignores_padding_rows():
    context = torch.randn(2, 3, 12)
    padded = torch.cat([context, torch.zeros(2, 5, 12)], dim=1)
    torch.testing.assert_close(masked_mean(padded), context.mean(1))
    assert torch.equal(masked_mean(torch.zeros(1, 4, 12)), torch.zeros(1, 12))


def test_pooled_text_starts_as_the_network_without_it_and_reaches_the_modulation():
    """Fresh, it changes nothing (Wan weights behave unchanged); trained, the caption reaches every block's
    modulation: with cross-attention's output zeroed, two captions give different outputs only through it."""
    x, t = torch.randn(1, 8, 2, 4, 4), torch.tensor([500.0])
    c1, c2 = torch.randn(1, 4, 12), torch.randn(1, 4, 12)
    plain, pooled = tiny_dit(), tiny_dit(pooled_text=True)
    missing = pooled.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("pooled_text_embedding.") for k in missing)
    torch.testing.assert_close(pooled(x, t, c1), plain(x, t, c1))
    for net in (plain, pooled):
        for block in net.blocks:
            torch.nn.init.zeros_(block.cross_attn.o.weight)
            torch.nn.init.zeros_(block.cross_attn.o.bias)
    torch.testing.assert_close(plain(x, t, c1), plain(x, t, c2))
    torch.nn.init.normal_(pooled.pooled_text_embedding[-1].weight, std=0.1)
    assert (pooled(x, t, c1) - pooled(x, t, c2)).abs().amax() > 1e-3


def test_ultragen_gates_read_the_clips_noise_level_under_per_token_timesteps():
    """TI2V: the clean first frame's tokens at t = 0 leave the gates at the noisy tokens' t."""
    from functools import partial

    from ultragen.models.attention import UltraGenAttention

    strategy = partial(UltraGenAttention, local_windows=WindowOptions(counts=[[2, 2]]),
                       hier_windows=WindowOptions(counts=[[2, 2]]), global_compression=CompressionOptions(factor=2),
                       lora=LoRAOptions(rank=4), padding=Padding("replicate"))
    net = tiny_dit(attention=strategy)
    seen = []
    net.blocks[1].self_attn.strategy.register_forward_pre_hook(lambda m, args: seen.append(args[2].timestep_freq))
    x, c = torch.randn(1, 8, 2, 8, 8), torch.randn(1, 4, 12)
    t = torch.full((1, 32), 700.0)
    t[:, :16] = 0.0  # the first latent frame clean
    net(x, t, c)
    net(x, torch.tensor([700.0]), c)
    assert seen[0].shape == (1, 16) and torch.equal(seen[0], seen[1])
