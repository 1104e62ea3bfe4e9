"""A synthesized state dict with the released UltraGen names and shapes (METHOD.md §5.2) loads into the DiT."""

from pathlib import Path

import torch
from safetensors.torch import save_file

from ultragen.checkpoints import (
    convert_ultragen_release,
    detect_format,
    load_dit_weights,
)
from ultragen.lit.config import instantiate, read_config
from ultragen.models.wan import StrategyFactory, WanDiT

DIM, HEADS, RANK, FREQ = 48, 4, 8, 256
LAYERS, FULL = 8, [0, 1, 2, 7]
RELEASE_YAML = Path(__file__).parents[1] / "configs" / "experiments" / "ultragen_release.yaml"


def release_dit() -> WanDiT:
    """Tiny WanDiT with the ultragen_release experiment's attention settings (rank shrunk), read by fit's parser."""
    attention = read_config([RELEASE_YAML.parents[1] / "model" / "tiny.yaml", RELEASE_YAML]).model.net.init_args.attention
    attention.init_args.lora.rank = RANK
    torch.manual_seed(0)
    return WanDiT(
        16, 32, dim=DIM, ffn_dim=96, num_heads=HEADS, num_layers=LAYERS, freq_dim=FREQ, full_attention_layers=FULL,
        attention=instantiate(attention, StrategyFactory),
    )


def released_block_tensors(i: int) -> dict[str, torch.Tensor]:
    """The 44 extra tensors of a released modified block, with their released shapes."""
    shapes = {}
    for branch in (1, 2):
        for proj in "qkv":
            p = f"blocks.{i}.self_attn.{proj}_lora_{branch}"
            shapes |= {f"{p}.lora_A.weight": (RANK, DIM), f"{p}.lora_A.bias": (RANK,),
                       f"{p}.lora_B.weight": (DIM, RANK), f"{p}.lora_B.bias": (DIM,)}
    for suffix in ("", "2"):
        e = f"blocks.{i}.self_attn.alpha_time_embedding{suffix}"
        p = f"blocks.{i}.self_attn.alpha_time_projection{suffix}"
        shapes |= {f"{e}.0.weight": (DIM, FREQ), f"{e}.0.bias": (DIM,), f"{e}.2.weight": (DIM, DIM),
                   f"{e}.2.bias": (DIM,), f"{p}.1.weight": (DIM, DIM), f"{p}.1.bias": (DIM,)}
    for suffix, k in (("", 4), ("_hierachcal", 2)):
        shapes |= {f"blocks.{i}.self_attn.downsample_conv{suffix}.weight": (DIM, 1, k, k),
                   f"blocks.{i}.self_attn.downsample_conv{suffix}.bias": (DIM,),
                   f"blocks.{i}.self_attn.upsample_conv{suffix}.weight": (DIM, 1, 3, 3, 3),
                   f"blocks.{i}.self_attn.upsample_conv{suffix}.bias": (DIM,)}
    return {k: torch.randn(s) for k, s in shapes.items()}


def released_state_dict() -> dict[str, torch.Tensor]:
    """Wan2.1 keys (from a plain full-attention DiT) + the released UltraGen keys of blocks 3..6."""
    torch.manual_seed(1)
    plain = WanDiT(16, 32, dim=DIM, ffn_dim=96, num_heads=HEADS, num_layers=LAYERS, freq_dim=FREQ)
    state = {k: v.clone() for k, v in plain.state_dict().items()}
    for i in range(LAYERS):
        if i not in FULL:
            block = released_block_tensors(i)
            assert len(block) == 44
            state |= block
    return state


def test_released_layout_loads_with_no_missing_or_unexpected_keys():
    net, released = release_dit(), released_state_dict()
    converted = convert_ultragen_release(released)
    assert len(converted) == len(released)
    missing, unexpected = net.load_state_dict(converted, strict=True)
    assert not missing and not unexpected
    own = net.state_dict()
    pairs = {
        "blocks.3.self_attn.q_lora_1.lora_A.bias": "blocks.3.self_attn.strategy.global_branch.lora.q.lora_A.bias",
        "blocks.4.self_attn.v_lora_2.lora_B.weight": "blocks.4.self_attn.strategy.hier_branch.lora.v.lora_B.weight",
        "blocks.5.self_attn.alpha_time_embedding.2.weight":
            "blocks.5.self_attn.strategy.gate_global.embedding.2.weight",
        "blocks.5.self_attn.alpha_time_projection2.1.bias": "blocks.5.self_attn.strategy.gate_local.projection.1.bias",
        "blocks.6.self_attn.downsample_conv.weight": "blocks.6.self_attn.strategy.global_branch.down.weight",
        "blocks.6.self_attn.upsample_conv_hierachcal.bias": "blocks.6.self_attn.strategy.hier_branch.up.bias",
    }
    for release_key, our_key in pairs.items():
        assert torch.equal(own[our_key], released[release_key])


def test_release_file_is_detected_and_loaded_safely(tmp_path):
    path = tmp_path / "ultragen_1080p.safetensors"
    released = released_state_dict()
    save_file(released, str(path))
    assert detect_format(released) == "ultragen_release"
    net = release_dit()
    report = load_dit_weights(net, path)
    assert report.ok and report.format == "ultragen_release" and not report.fresh
    x = torch.randn(1, 16, 2, 12, 20)
    out = net(x, torch.tensor([700.0]), torch.randn(1, 5, 32))
    assert out.shape == x.shape and torch.isfinite(out).all()
