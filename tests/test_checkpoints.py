"""Checkpoint loading: Wan2.1 key list of the 1.3B preset, file formats, safety, reports, diffusers conversion."""

import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file
from torch import nn

from ultragen.checkpoints import (
    convert_diffusers,
    group_keys,
    load_dit_weights,
    load_state_dict_into,
)
from ultragen.models.attention import FullAttention
from ultragen.models.wan import WanDiT

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(in_dim=4, text_dim=16, dim=24, ffn_dim=48, num_heads=2, num_layers=2, freq_dim=32)


def wan21_key_shapes(in_dim, text_dim, dim, ffn_dim, num_layers, freq_dim, patch_size, out_dim=None):
    """The official Wan2.1 WanModel (T2V) parameter names and shapes, from its naming rules."""
    out_dim = out_dim or in_dim
    shapes = {
        "patch_embedding.weight": (dim, in_dim, *patch_size),
        "patch_embedding.bias": (dim,),
        "text_embedding.0.weight": (dim, text_dim),
        "text_embedding.0.bias": (dim,),
        "text_embedding.2.weight": (dim, dim),
        "text_embedding.2.bias": (dim,),
        "time_embedding.0.weight": (dim, freq_dim),
        "time_embedding.0.bias": (dim,),
        "time_embedding.2.weight": (dim, dim),
        "time_embedding.2.bias": (dim,),
        "time_projection.1.weight": (6 * dim, dim),
        "time_projection.1.bias": (6 * dim,),
        "head.head.weight": (out_dim * patch_size[0] * patch_size[1] * patch_size[2], dim),
        "head.head.bias": (out_dim * patch_size[0] * patch_size[1] * patch_size[2],),
        "head.modulation": (1, 2, dim),
    }
    for i in range(num_layers):
        b = f"blocks.{i}."
        shapes[b + "modulation"] = (1, 6, dim)
        for attn in ("self_attn", "cross_attn"):
            for proj in "qkvo":
                shapes[f"{b}{attn}.{proj}.weight"] = (dim, dim)
                shapes[f"{b}{attn}.{proj}.bias"] = (dim,)
            shapes[f"{b}{attn}.norm_q.weight"] = (dim,)
            shapes[f"{b}{attn}.norm_k.weight"] = (dim,)
        shapes[b + "norm3.weight"] = (dim,)
        shapes[b + "norm3.bias"] = (dim,)
        shapes[b + "ffn.0.weight"] = (ffn_dim, dim)
        shapes[b + "ffn.0.bias"] = (ffn_dim,)
        shapes[b + "ffn.2.weight"] = (dim, ffn_dim)
        shapes[b + "ffn.2.bias"] = (dim,)
    return shapes


class GainedFull(FullAttention):
    """Full attention with a learned per-channel output gain: a strategy that owns one parameter."""

    def __init__(self, dim, num_heads, layer_idx, freq_dim=256, backend="sdpa"):
        super().__init__(dim, num_heads, layer_idx, freq_dim, backend)
        self.gain = nn.Parameter(torch.ones(dim))

    def forward(self, attn, x, ctx):
        return super().forward(attn, x, ctx) * self.gain


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return WanDiT(**TINY)


def fresh(**kwargs):
    torch.manual_seed(1)
    return WanDiT(**{**TINY, **kwargs})


def assert_same_weights(a: nn.Module, b: nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)


def test_13b_preset_has_the_wan21_key_list():
    init = yaml.safe_load((ROOT / "configs/model/wan2.1_t2v_1.3b.yaml").read_text())["model"]["net"]["init_args"]
    with torch.device("meta"):
        net = WanDiT(16, 4096, **init)
    got = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    expected = wan21_key_shapes(16, 4096, 1536, 8960, 30, 256, (1, 2, 2))
    assert len(expected) == 825
    assert got == expected


@pytest.mark.parametrize("layout", ["safetensors", "sharded", "sharded_dir", "pt", "lightning"])
def test_state_dict_round_trips(tiny, tmp_path, layout):
    state = tiny.state_dict()
    keys = sorted(state)
    if layout == "safetensors":
        path = tmp_path / "dit.safetensors"
        save_file(state, path)
    elif layout.startswith("sharded"):
        halves = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
        for name, part in halves.items():
            save_file({k: state[k] for k in part}, tmp_path / name)
        index = {"metadata": {}, "weight_map": {k: name for name, part in halves.items() for k in part}}
        (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
        path = tmp_path if layout == "sharded_dir" else tmp_path / "model.safetensors.index.json"
    elif layout == "pt":
        path = tmp_path / "dit.pt"
        torch.save(state, path)
    else:
        path = tmp_path / "last.ckpt"
        lit = {f"net.{k}": v for k, v in state.items()} | {"codec.scale": torch.ones(())}
        torch.save({"state_dict": lit, "epoch": 3, "pytorch-lightning_version": "2.6.6"}, path)
    net = fresh()
    report = load_dit_weights(net, path)
    assert report.ok and report.loaded == keys
    assert report.format == ("lightning" if layout == "lightning" else "wan2.1")
    assert_same_weights(net, tiny)


def test_refuses_pickled_code_without_running_it(tiny, tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.makedirs, (str(marker),)

    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": tiny.state_dict(), "callback": Payload()}, path)
    with pytest.raises(ValueError, match="pickled Python objects .*os.makedirs.*safetensors"):
        load_dit_weights(fresh(), path)
    assert not marker.exists()


def test_report_lists_missing_unexpected_and_mismatched(tiny, caplog):
    state = dict(tiny.state_dict())
    del state["blocks.0.ffn.0.bias"], state["blocks.1.ffn.0.bias"]
    state["blocks.1.extra.weight"] = torch.zeros(3)
    state["text_embedding.0.weight"] = torch.zeros(24, 384)  # a checkpoint for another text encoder
    with pytest.raises(ValueError) as err:
        load_state_dict_into(fresh(), state)
    text = str(err.value)
    assert "MISSING from the file (left at their initial values): 2" in text
    assert "blocks.{0-1}.ffn.0.bias (2)" in text
    assert "UNEXPECTED in the file (ignored): 1\n    blocks.{1}.extra.weight (1)" in text
    assert "text_embedding.0.weight: file (24, 384) vs model (24, 16)" in text
    assert "net_weights_strict: false" in text

    net = fresh()
    report = load_state_dict_into(net, state, strict=False)
    assert not report.ok
    assert report.missing == ["blocks.0.ffn.0.bias", "blocks.1.ffn.0.bias"]
    assert report.unexpected == ["blocks.1.extra.weight"]
    assert [k for k, *_ in report.mismatched] == ["text_embedding.0.weight"]
    torch.testing.assert_close(net.blocks[0].ffn[0].weight, tiny.blocks[0].ffn[0].weight)
    assert "SHAPE MISMATCH" in caplog.text


def test_group_keys_collapses_blocks():
    keys = ["blocks.0.a", "blocks.1.a", "blocks.2.a", "blocks.5.b", "blocks.7.b", "head.head.weight"]
    assert group_keys(keys) == ["blocks.{0-2}.a (3)", "blocks.{5,7}.b (2)", "head.head.weight"]


def test_plain_wan_into_strategy_model_initialises_strategy_fresh(tiny, tmp_path):
    save_file(tiny.state_dict(), tmp_path / "wan.safetensors")
    net = fresh(attention=GainedFull, full_attention_layers=[0])
    report = load_dit_weights(net, tmp_path / "wan.safetensors")
    assert report.ok and report.fresh == ["blocks.1.self_attn.strategy.gain"]
    assert "new strategy parameters, initialised fresh: 1" in str(report)
    # A checkpoint that carries strategy weights must carry all of them.
    partial = dict(net.state_dict())
    net2 = fresh(attention=GainedFull)
    with pytest.raises(ValueError, match=r"MISSING .*\n    blocks.\{0\}.self_attn.strategy.gain"):
        load_state_dict_into(net2, partial)


def test_errors_name_the_fix(tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dit_weights(tiny, tmp_path / "nope.safetensors")
    (tmp_path / "a.safetensors").write_bytes(b"")
    (tmp_path / "b.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="several \\*.safetensors files"):
        load_dit_weights(tiny, tmp_path)
    (tmp_path / "w.npz").write_bytes(b"")
    with pytest.raises(ValueError, match="unknown weights file type 'w.npz'"):
        load_dit_weights(tiny, tmp_path / "w.npz")
    save_file(tiny.state_dict(), tmp_path / "a.safetensors")
    with pytest.raises(ValueError, match="unknown checkpoint format 'wan3'"):
        load_dit_weights(tiny, tmp_path / "a.safetensors", format="wan3")


#################################################################################
#                     diffusers WanTransformer3DModel                           #
#################################################################################


@pytest.fixture(scope="module")
def diffusers_dit():
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
        text_dim=16, freq_dim=32, ffn_dim=48, num_layers=2, cross_attn_norm=True, eps=1e-6,
    ).eval()
    with torch.no_grad():
        for p in model.parameters():  # diffusers zero-/one-initialises some weights; make every one informative
            p.normal_(0, 0.3)
    return model


def test_diffusers_conversion_loads_fully_and_matches_outputs(diffusers_dit, tmp_path):
    from ultragen.models.wan import sinusoidal_embedding

    diffusers_dit.save_pretrained(tmp_path / "transformer")
    net = fresh(dim=32).eval()  # head_dim 16: RoPE split 8/4/4 over t/h/w, so the axis order matters
    report = load_dit_weights(net, tmp_path / "transformer")
    assert report.format == "diffusers" and report.ok and len(report.loaded) == len(net.state_dict())

    x, t, ctx = torch.randn(2, 4, 3, 6, 8), torch.tensor([999.0, 263.16]), torch.randn(2, 7, 16)
    with torch.no_grad():
        ours = net(x, t, ctx)
        theirs = diffusers_dit(x, t, ctx).sample
        # diffusers builds the timestep sinusoid in float32 (angles up to 1000 rad); Wan2.1 and WanDiT use float64.
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
        proj = diffusers_dit.condition_embedder.timesteps_proj
        proj.forward = lambda ts: sinusoidal_embedding(32, ts).float()
        try:
            exact = diffusers_dit(x, t, ctx).sample
        finally:
            del proj.forward
    torch.testing.assert_close(ours, exact, atol=1e-6, rtol=1e-6)


def test_per_token_timesteps_match_diffusers_wan22_path(diffusers_dit, tmp_path):
    """Wan2.2 TI2V: t of shape (B, N), here the first latent frame clean (t = 0) and the rest at each clip's t."""
    from ultragen.models.wan import sinusoidal_embedding

    diffusers_dit.save_pretrained(tmp_path / "transformer")
    net = fresh(dim=32).eval()
    load_dit_weights(net, tmp_path / "transformer")
    x, ctx = torch.randn(2, 4, 3, 6, 8), torch.randn(2, 7, 16)
    t = torch.tensor([999.0, 263.16])[:, None].repeat(1, 3 * 3 * 4)  # grid 3x3x4 tokens, (f, h, w) order
    t[:, : 3 * 4] = 0.0
    proj = diffusers_dit.condition_embedder.timesteps_proj
    proj.forward = lambda ts: sinusoidal_embedding(32, ts).float()
    with torch.no_grad():
        try:
            theirs = diffusers_dit(x, t, ctx).sample
        finally:
            del proj.forward
        ours = net(x, t, ctx)
        per_clip = net(x, t[:, -1], ctx)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)
    assert (ours - per_clip)[:, :, :1].abs().amax() > 1e-3  # the clean frame is modulated differently
    torch.testing.assert_close(net(x, t[:, -1:].expand(-1, 36), ctx), per_clip, atol=1e-5, rtol=1e-5)  # GEMM shapes
    with pytest.raises(ValueError, match=r"neither one per clip \(B,\) nor one per token \(B, 36\)"):
        net(x, t[:, :35], ctx)


def test_diffusers_conversion_inverts_diffusers_own_converter(tiny, diffusers_dit):
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    wan = dict(tiny.state_dict())
    to_diffusers = convert_wan_transformer_to_diffusers(dict(wan))
    assert to_diffusers.keys() == diffusers_dit.state_dict().keys()
    assert convert_diffusers(to_diffusers).keys() == wan.keys()


#################################################################################
#                   UltraGen release layout, end to end                         #
#################################################################################


def release_key_shapes(dim: int, rank: int, freq_dim: int, blocks) -> dict[str, tuple[int, ...]]:
    """Strategy tensors of the released UltraGen checkpoints (METHOD.md §5.2), named and shaped as released."""
    shapes = {}
    for i in blocks:
        b = f"blocks.{i}.self_attn."
        for proj in "qkv":
            for branch in (1, 2):
                lora = f"{b}{proj}_lora_{branch}."
                shapes |= {lora + "lora_A.weight": (rank, dim), lora + "lora_A.bias": (rank,)}
                shapes |= {lora + "lora_B.weight": (dim, rank), lora + "lora_B.bias": (dim,)}
        for suffix in ("", "2"):
            emb, proj = f"{b}alpha_time_embedding{suffix}.", f"{b}alpha_time_projection{suffix}."
            shapes |= {emb + "0.weight": (dim, freq_dim), emb + "0.bias": (dim,)}
            shapes |= {emb + "2.weight": (dim, dim), emb + "2.bias": (dim,)}
            shapes |= {proj + "1.weight": (dim, dim), proj + "1.bias": (dim,)}
        for conv, kernel in (("downsample_conv", (4, 4)), ("downsample_conv_hierachcal", (2, 2))):
            shapes |= {f"{b}{conv}.weight": (dim, 1, *kernel), f"{b}{conv}.bias": (dim,)}
        for conv in ("upsample_conv", "upsample_conv_hierachcal"):
            shapes |= {f"{b}{conv}.weight": (dim, 1, 3, 3, 3), f"{b}{conv}.bias": (dim,)}
    return shapes


def test_release_checkpoint_loads_fully_into_the_release_config(tmp_path):
    from ultragen.checkpoints import convert_ultragen_release
    from ultragen.lit.config import instantiate, read_config
    from ultragen.models.wan import StrategyFactory

    args = read_config([ROOT / "configs/model/wan2.1_t2v_1.3b.yaml", ROOT / "configs/experiments/ultragen_release.yaml"])
    args = args.model.net.init_args
    args.attention.init_args.lora.rank = 4
    torch.manual_seed(0)
    net = WanDiT(
        in_dim=4, text_dim=16, dim=32, ffn_dim=48, num_heads=2, num_layers=30, freq_dim=256,
        attention=instantiate(args.attention, StrategyFactory), full_attention_layers=args.full_attention_layers,
    )
    wan = {k: torch.randn(v.shape) for k, v in net.state_dict().items() if ".strategy." not in k}
    extra = {k: torch.randn(s) for k, s in release_key_shapes(32, 4, 256, range(3, 27)).items()}
    assert len(extra) == 44 * 24
    torch.save(wan | extra, tmp_path / "ultragen_1080p.ckpt")  # a raw state dict, as released

    report = load_dit_weights(net, tmp_path / "ultragen_1080p.ckpt")
    assert report.format == "ultragen_release" and report.ok and not report.fresh
    assert report.loaded == sorted(net.state_dict())
    loaded = net.state_dict()
    for key, value in (wan | extra).items():
        (name,) = convert_ultragen_release({key: value})
        torch.testing.assert_close(loaded[name], value, rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("layout", ["original", "diffusers"])
def test_wan22_layouts_load_completely_with_the_detected_format(tmp_path, layout):
    """Wan2.2-TI2V-5B's checkpoints use Wan2.1's key layouts (diffusers: the same WanTransformer3DModel class) with a
    48-channel latent; a tiny model of that shape (12 channels here) round-trips through both."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    torch.manual_seed(2)
    source = WanDiT(**{**TINY, "in_dim": 12})
    state = dict(source.state_dict())
    if layout == "diffusers":
        state = convert_wan_transformer_to_diffusers(state)
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "dit.safetensors")
    net = fresh(in_dim=12)
    report = load_dit_weights(net, tmp_path / "dit.safetensors")
    assert report.ok and len(report.loaded) == len(net.state_dict()) and not report.missing
    assert report.format == ("diffusers" if layout == "diffusers" else "wan2.1")
    assert_same_weights(net, source)
