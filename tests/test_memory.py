"""`ultragen memory`: exact parameter/gradient/optimizer figures against a real module, the sharding table, the
activation model against the tensors torch saves for backward, checkpointing and sequence parallelism, errors."""

from functools import partial
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from ultragen.cli import main as cli
from ultragen.lit.cli import UltraGenCLI
from ultragen.lit.config import read_config
from ultragen.memory import (
    PRECISIONS,
    SHARDINGS,
    Estimate,
    attention_saved,
    block_saved,
    build_net,
    main,
    state_memory,
)
from ultragen.models.attention import (
    AttentionContext,
    CompressionOptions,
    FullAttention,
    GlobalCompressedAttention,
    HierarchicalAttention,
    LoRAOptions,
    LocalWindowAttention,
    MultiScaleWindowAttention,
    Padding,
    SwinAttention,
    UltraGenAttention,
    VideoGrid,
    WindowOptions,
)
from ultragen.models.wan import WanDiT, sinusoidal_embedding

ROOT = Path(__file__).resolve().parents[1]
TINY, TINY_UG = str(ROOT / "configs/debug/tiny.yaml"), str(ROOT / "configs/debug/tiny_ultragen.yaml")
CASES = {  # name -> (config files, `model:` overrides)
    "tiny": ([TINY], {}),
    "ultragen": ([TINY, TINY_UG], {}),
    "ultragen-strategy": ([TINY, TINY_UG], {"trainable": "strategy"}),
    "tiny-lora": ([TINY], {"trainable": "lora"}),
    "ultragen-lora": ([TINY, TINY_UG], {"trainable": "lora"}),  # default targets skip the strategy's own lora.q
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    """(name, config files, the real VideoDiffusionModule the CLI builds from them)."""
    files, model = CASES[request.param]
    if model:
        extra = tmp_path_factory.mktemp(request.param) / "override.yaml"
        extra.write_text(yaml.safe_dump({"model": model}))
        files = [*files, str(extra)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.argv", ["ultragen"])  # LightningCLI warns when pytest's arguments sit beside `args`
        module = UltraGenCLI(args=[a for f in files for a in ("-c", f)], run=False).model
    return request.param, files, module


#################################################################################
#                    Parameters, gradients, optimizer states                    #
#################################################################################


def test_parameter_counts_are_exact(case):
    name, files, module = case
    net = build_net(read_config(files), module.codec.latent_channels, module.text_encoder.dim)
    counts = [(sum(p.numel() for p in m.parameters()), sum(p.numel() for p in m.parameters() if p.requires_grad))
              for m in (net, module.net)]
    assert counts[0] == counts[1]
    if name.startswith("ultragen"):
        assert any(".strategy." in n for n, _ in net.named_parameters())


@pytest.mark.parametrize("precision,weight,grad,optimizer", [("bf16-mixed", 2, 2, 12), ("32-true", 4, 4, 8)])
def test_state_bytes_are_exact_counts(case, precision, weight, grad, optimizer):
    _, _, module = case
    total = sum(p.numel() for p in module.net.parameters())
    trainable = sum(p.numel() for p in module.net.parameters() if p.requires_grad)
    ddp = state_memory(total, trainable, PRECISIONS[precision], SHARDINGS[0], world_size=8)
    expected = (weight * total, grad * trainable, optimizer * trainable, 0)
    assert (ddp.weights, ddp.grads, ddp.optimizer, ddp.cpu) == expected


def test_cli_prints_the_exact_counts(case, capsys):
    _, files, module = case
    cli(["memory", "--model", "none", *[a for f in files for a in ("-c", f)], "--grid", "3x8x8", "--world-size", "2",
         "--in-dim", str(module.codec.latent_channels), "--text-dim", str(module.text_encoder.dim)])
    out = capsys.readouterr().out
    total = sum(p.numel() for p in module.net.parameters())
    trainable = sum(p.numel() for p in module.net.parameters() if p.requires_grad)
    assert f"parameters {total:,}, trainable ({module.hparams.trainable}) {trainable:,};" in out
    assert all(f"\n{s.name} " in out for s in SHARDINGS)


@pytest.mark.parametrize("world_size", [1, 8])
def test_sharding_divides_the_right_states(world_size):
    w, total, trainable = world_size, 1000, 400
    p = PRECISIONS["bf16-mixed"]
    weights, grads, optim = 2 * total, 2 * trainable, 12 * trainable
    expected = {  # GPU weights, gradients, optimizer states; CPU
        "DDP": (weights, grads, optim, 0),
        "ZeRO-1": (weights, grads, optim / w, 0),
        "ZeRO-2": (weights, grads / w, optim / w, 0),
        "ZeRO-2+offload": (weights, grads / w, 0, optim / w),
        "ZeRO-3": (weights / w, grads / w, optim / w, 0),
        "ZeRO-3+offload": (0, grads / w, 0, optim / w + weights / w),
        "FSDP2": (weights / w, grads / w, optim / w, 0),
    }
    assert [s.name for s in SHARDINGS] == list(expected)
    for sharding in SHARDINGS:
        m = state_memory(total, trainable, p, sharding, w)
        assert (m.weights, m.grads, m.optimizer, m.cpu) == pytest.approx(expected[sharding.name]), sharding.name


#################################################################################
#                                  Activations                                  #
#################################################################################


class FusedRMSNorm(torch.autograd.Function):
    """RMSNorm keeping what the fused CUDA kernel keeps (input, weight, rstd); CPU's composite also keeps its output."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        rstd = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, weight, rstd)
        return (x.float() * rstd * weight.float()).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        raise NotImplementedError("only the forward's saved tensors are measured")


def saved_bytes(net: WanDiT, layer: int, grid: VideoGrid, dtype: torch.dtype, text_len: int = 8) -> int:
    """Bytes of the tensors block `layer` saves for backward, without parameters, the shared text context and the
    cached constants (RoPE tables, window indices) a second forward shares with the first."""
    net = net.to(dtype)
    params = {p.untyped_storage().data_ptr() for p in net.parameters()}
    freq = sinusoidal_embedding(net.freq_dim, torch.tensor([500.0])).float()
    context = torch.randn(1, text_len, net.dim, dtype=dtype, requires_grad=True)
    ctx = AttentionContext(grid=grid, rope=net.rope, timestep_freq=freq)
    runs = []
    for _ in range(2):
        seen: dict[int, int] = {}

        def pack(t, seen=seen):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        x = torch.randn(1, grid.numel, net.dim, dtype=dtype, requires_grad=True)
        t_mod = net.time_projection(net.time_embedding(freq.to(dtype))).unflatten(1, (6, net.dim))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = net.blocks[layer](x, t_mod, context, ctx)
        runs.append((seen, out))  # keep the graph: its storages stay allocated
    (first, _), (second, _) = runs
    return sum(size for ptr, size in second.items() if ptr not in first and ptr not in params)


UG = dict(local_windows=WindowOptions(counts=[[2, 2], [3, 3]]), hier_windows=WindowOptions(counts=[[2, 2], [3, 3]]),
          global_compression=CompressionOptions(factor=4), hier_compression=CompressionOptions(factor=2))
REPLICATE, INTERPOLATE = Padding("replicate"), Padding("interpolate")
AWKWARD, EVEN = VideoGrid(2, 7, 10), VideoGrid(3, 6, 8)
STRATEGIES = {
    "full": (FullAttention, EVEN),
    "ultragen-replicate": (partial(UltraGenAttention, padding=REPLICATE, **UG), AWKWARD),
    "ultragen-interpolate": (partial(UltraGenAttention, padding=INTERPOLATE, **UG), AWKWARD),
    "ultragen-release": (
        partial(UltraGenAttention, padding=INTERPOLATE, lora=LoRAOptions(bias=True),
                **{**UG, "global_compression": CompressionOptions(factor=4, key_proj="q")}), AWKWARD
    ),
    "ultragen-o-lora": (partial(UltraGenAttention, padding=REPLICATE, lora=LoRAOptions(targets=["q", "k", "v", "o"]), **UG),
                        AWKWARD),
    "ultragen-swin-no-global": (partial(UltraGenAttention, padding=REPLICATE, use_global=False,
                                        **{**UG, "local_windows": WindowOptions(counts=[[2, 2], [3, 3]], shifts=[False, True])}),
                                EVEN),
    "ultragen-no-local": (partial(UltraGenAttention, padding=REPLICATE, use_local=False, **UG), AWKWARD),
    "local": (partial(LocalWindowAttention, windows=WindowOptions(counts=[[2, 2], [3, 3]]), padding=REPLICATE), AWKWARD),
    "swin": (partial(SwinAttention, windows=WindowOptions(counts=[[2, 2]], shifts=[False, True]), padding=REPLICATE), AWKWARD),
    "global": (partial(GlobalCompressedAttention, compression=CompressionOptions(factor=4), padding=REPLICATE), AWKWARD),
    "hierarchical": (partial(HierarchicalAttention, compression=CompressionOptions(factor=2), padding=REPLICATE), AWKWARD),
    "multiscale": (partial(MultiScaleWindowAttention, windows=WindowOptions(counts=[[1, 2, 2], [3, 2, 2]])), EVEN),
}


@pytest.mark.parametrize("precision,dtype", [("32-true", torch.float32), ("bf16-mixed", torch.bfloat16)])
@pytest.mark.parametrize("name", list(STRATEGIES))
def test_block_model_matches_the_tensors_torch_saves(monkeypatch, name, precision, dtype):
    attention, grid = STRATEGIES[name]
    monkeypatch.setattr(nn.RMSNorm, "forward", lambda self, x: FusedRMSNorm.apply(x, self.weight, self.eps))
    torch.manual_seed(0)
    net = WanDiT(16, 64, 64, 128, 4, 2, freq_dim=64, attention=attention)  # the tiny DiT's widths
    for layer in (0, 1):
        model = block_saved(net.blocks[layer].self_attn.strategy, 128, 8, grid).bytes(PRECISIONS[precision])
        assert model == pytest.approx(saved_bytes(net, layer, grid, dtype), rel=0.01), layer


def tiny_estimate(files: list[str], grid: VideoGrid, every: int, sp: int = 1, text_len: int = 16, **net) -> Estimate:
    config = read_config(files)
    for key, value in net.items():
        config.model.net.init_args[key] = value
    return Estimate(build_net(config, 192, 384), grid, "bf16-mixed", 1, sp, 1, text_len, "all", every)


def test_checkpointing_keeps_block_inputs_plus_one_block():
    grid = VideoGrid(3, 16, 16)
    none, every_block, every_2nd = (tiny_estimate([TINY], grid, e, num_layers=4) for e in (0, 1, 2))
    block = none.block_bytes[0]
    assert none.block_bytes == [block] * 4
    block_input = grid.numel * 64 * 2  # (N, dim) in bf16
    outside = none.activations(0).total - 4 * block
    assert outside > 0
    assert every_block.activations(1).total == pytest.approx(outside + 4 * block_input + block - block_input)
    assert every_2nd.activations(2).total == pytest.approx(outside + 2 * block_input + 2 * block + block - block_input)
    assert every_block.activations(1).total < every_2nd.activations(2).total < none.activations(0).total


def test_checkpointing_recomputes_the_largest_checkpointed_block():
    e = tiny_estimate([TINY, TINY_UG], VideoGrid(3, 16, 16), 1)
    full, ultragen = e.block_bytes
    assert ultragen > full
    assert e.activations(1).recompute == pytest.approx(ultragen - 16 * 16 * 3 * 64 * 2)


def test_sp_degree_halves_sequence_activations():
    grid = VideoGrid(3, 16, 16)
    one, two = (tiny_estimate([TINY], grid, 0, sp=sp, text_len=0) for sp in (1, 2))  # no text: all sequence
    assert two.activations(0).total == pytest.approx(one.activations(0).total / 2)
    assert two.activations(1).total == pytest.approx(one.activations(1).total / 2)
    with_text = [tiny_estimate([TINY], grid, 0, sp=sp, text_len=16).activations(0).total for sp in (1, 2, 4)]
    assert with_text[0] - with_text[1] == pytest.approx(2 * (with_text[1] - with_text[2]))  # a/sp + text


def test_sp_keeps_the_gathered_global_plane_whole():
    grid, d = VideoGrid(3, 16, 16), 64
    with torch.device("meta"):
        ultragen = UltraGenAttention(d, 4, 1, padding=REPLICATE, **UG)
        no_global = UltraGenAttention(d, 4, 1, padding=REPLICATE, use_global=False, **UG)
    assert attention_saved(no_global, grid, 2).act == pytest.approx(attention_saved(no_global, grid, 1).act / 2)
    plane = 3 * 4 * 4  # compressed by 4: the global branch's tokens on every rank
    halved = attention_saved(ultragen, grid, 1).act / 2
    assert attention_saved(ultragen, grid, 2).act > halved
    assert attention_saved(ultragen, grid, 2).act - halved == pytest.approx((7 * d + 3 * LoRAOptions().rank) * plane / 2)


#################################################################################
#                                    Errors                                     #
#################################################################################


@pytest.mark.parametrize(
    "args,message",
    [
        (["--grid", "3x8"], "not of the form TxHxW"),
        (["--grid", "3x0x8"], "empty axis"),
        (["--world-size", "0"], "--world-size: 0 must be >= 1"),
        (["--world-size", "two"], "'two' is not an integer"),
        (["--sp-degree", "3"], "does not divide num_heads=4"),
        (["--world-size", "3", "--sp-degree", "2"], "not a multiple of --sp-degree 2"),
        (["--activation-checkpointing", "often"], "activation_checkpointing='often'"),
        (["--precision", "16-mixed"], "invalid choice"),
        (["-c", "configs/experiments/ultragen_1080p.yaml"], "full_attention_layers [2, -3] out of range"),
        (["-c", "configs/model/tiny.yaml", "-c", "configs/experiments/sliding_tile.yaml"],
         "no activation model for SlidingTileAttention yet"),
    ],
)
def test_bad_arguments_are_one_line_errors(monkeypatch, capsys, args, message):
    monkeypatch.chdir(ROOT)
    base = {"--grid": "3x8x8", "--world-size": "2"}
    for flag, value in zip(args[::2], args[1::2]):
        base.pop(flag, None)
    argv = ["-c", TINY, "--model", "none", *[a for kv in base.items() for a in kv], *args]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("ultragen memory: error:") and message in error
