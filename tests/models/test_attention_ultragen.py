"""UltraGenAttention: degenerate parity, saturated gates, ablation switches, gradients, checkpoints, YAMLs, logging."""

from collections.abc import Callable
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from jsonargparse import ArgumentParser
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_attention_windows import (
    DIM,
    HEADS,
    inputs,
    layer,
    make_ctx,
    pre_o,
    window_ids,
)

from ultragen.lit.config import layer_strategies, read_config
from ultragen.models.attention import (
    CompressionOptions,
    FullAttention,
    LoRAOptions,
    Padding,
    VideoGrid,
    WindowOptions,
)
from ultragen.models.attention.global_compressed import GlobalCompressedAttention
from ultragen.models.attention.global_local import UltraGenAttention
from ultragen.models.attention.hierarchical import HierarchicalAttention
from ultragen.models.wan import WanDiT

CONFIGS = Path(__file__).parents[2] / "configs" / "experiments"
EXPERIMENTS = sorted(CONFIGS.glob("*.yaml"))
TINY_NET = dict(dim=DIM, ffn_dim=64, num_heads=HEADS, num_layers=30, freq_dim=256)
RELEASE = dict(  # every release-compatibility option (LoRA rank shrunk to 4)
    local_windows=WindowOptions(counts=[[4, 4], [5, 5]], rope="window"),
    hier_windows=WindowOptions(counts=[[2, 2], [3, 3]], rope="window"),
    hier_compression=CompressionOptions(factor=2, up_init="box"),
    global_compression=CompressionOptions(factor=4, key_proj="q", up_init="box"),
    lora=LoRAOptions(rank=4, bias=True, init_b="kaiming"),
    padding=Padding("interpolate"),
    gate_weights="local",
)
KAIMING = LoRAOptions(rank=4, init_b="kaiming")


def saturate(gate, value: float) -> None:
    """Force a gate's sigmoid to 0 or 1 for every timestep."""
    with torch.no_grad():
        gate.projection[1].bias.fill_(value)


@pytest.mark.parametrize("use", [(1, 1, 1), (1, 0, 0), (0, 1, 1), (0, 0, 1), (1, 1, 0), (0, 1, 0)])
def test_degenerate_ultragen_equals_full_attention(use):
    grid = VideoGrid(2, 5, 6)
    x, ctx = inputs(grid), make_ctx(grid)
    switches = dict(zip(("use_local", "use_hierarchical", "use_global"), map(bool, use)))
    strategy = UltraGenAttention(
        DIM,
        HEADS,
        0,
        lora=LoRAOptions(rank=4),
        local_windows=WindowOptions(counts=[[1, 1]]),
        hier_windows=WindowOptions(counts=[[1, 1]]),
        hier_compression=CompressionOptions(factor=1),
        global_compression=CompressionOptions(factor=1),
        **switches,
    )
    for gate in (strategy.gate_global, strategy.gate_local):  # any gate values: every branch is full attention
        if gate is not None:
            torch.nn.init.normal_(gate.projection[1].weight, std=0.1)
    expected = layer(FullAttention(DIM, HEADS, 0))(x, ctx)
    attn = layer(strategy)
    out = attn(x, ctx)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    out.sum().backward()
    assert all(p.grad is not None for p in attn.strategy.parameters() if p.requires_grad)


@pytest.mark.parametrize("orientation", ["global", "local"])
def test_saturated_gates_select_one_branch(orientation):
    grid = VideoGrid(2, 8, 8)
    x = inputs(grid)
    kw = dict(local_windows=WindowOptions(counts=[[2, 2]]), hier_windows=WindowOptions(counts=[[2, 2]]), lora=KAIMING)
    kw["gate_weights"] = orientation
    attn = layer(UltraGenAttention(DIM, HEADS, 0, **kw))
    s = attn.strategy
    sign = 1.0 if orientation == "global" else -1.0  # sign that makes the gate pick the coarser branch
    saturate(s.gate_global, -30 * sign)
    saturate(s.gate_local, -30 * sign)
    torch.testing.assert_close(pre_o(attn, x, grid), s.local_branch(attn, x, make_ctx(grid)))
    saturate(s.gate_local, 30 * sign)
    torch.testing.assert_close(pre_o(attn, x, grid), s.hier_branch(attn, x, make_ctx(grid)))
    saturate(s.gate_global, 30 * sign)
    torch.testing.assert_close(pre_o(attn, x, grid), s.global_branch(attn, x, make_ctx(grid)))
    values = s.gate_values(make_ctx(grid).timestep_freq)
    torch.testing.assert_close(values["global"], torch.ones(2))


def test_gates_start_at_half_and_orientations_convert_by_negation():
    grid = VideoGrid(2, 4, 4)
    x = inputs(grid)
    kw = dict(local_windows=WindowOptions(counts=[[2, 2]]), hier_windows=WindowOptions(counts=[[1, 1]]), lora=KAIMING)
    paper, release = layer(UltraGenAttention(DIM, HEADS, 0, **kw)), layer(UltraGenAttention(DIM, HEADS, 0, **kw))
    values = paper.strategy.gate_values(make_ctx(grid).timestep_freq)
    torch.testing.assert_close(
        values,
        {"global": torch.full((2,), 0.5), "hierarchical": torch.full((2,), 0.25), "local": torch.full((2,), 0.25)},
    )
    torch.manual_seed(3)
    for gate in ("gate_global", "gate_local"):
        for p in getattr(paper.strategy, gate).parameters():
            torch.nn.init.normal_(p, std=0.3)
    state = paper.strategy.state_dict()
    for key in [k for k in state if k.endswith("projection.1.weight") or k.endswith("projection.1.bias")]:
        state[key] = -state[key]
    release.strategy = UltraGenAttention(DIM, HEADS, 0, gate_weights="local", **kw)
    release.strategy.load_state_dict(state)
    torch.testing.assert_close(pre_o(release, x, grid), pre_o(paper, x, grid), rtol=1e-5, atol=1e-5)


def test_ablation_switches_build_the_right_branches():
    s = UltraGenAttention(DIM, HEADS, 1, use_global=False, lora=LoRAOptions(rank=4))
    assert s.global_branch is None and s.gate_global is None and isinstance(s.hier_branch, HierarchicalAttention)
    s = UltraGenAttention(DIM, HEADS, 1, use_hierarchical=False, lora=LoRAOptions(rank=4))
    assert s.hier_branch is None and s.gate_local is None and isinstance(s.global_branch, GlobalCompressedAttention)
    s = UltraGenAttention(DIM, HEADS, 1, use_local=False, lora=LoRAOptions(rank=4))
    assert s.local_branch is None and s.gate_local is None and s.gate_global is not None
    with pytest.raises(ValueError, match="keep at least one branch"):
        UltraGenAttention(DIM, HEADS, 1, use_local=False, use_global=False, use_hierarchical=False)
    s = UltraGenAttention(DIM, HEADS, 1, lora=LoRAOptions(rank=0))
    assert s.global_branch.lora is None and s.hier_branch.lora is None
    s = UltraGenAttention(DIM, HEADS, 1, local_windows=WindowOptions(counts=[[4, 4]], shifts=[False, True]))
    assert s.local_branch.shifted and not UltraGenAttention(DIM, HEADS, 1).local_branch.shifted
    s = UltraGenAttention(DIM, HEADS, 3, lora=LoRAOptions(rank=4))
    assert s.local_branch.window_grid == (5, 5) and s.hier_branch.window_grid == (3, 3)
    assert "branches=['local', 'hierarchical', 'global']" in repr(s) and "windows=5x5" in repr(s)


def test_global_branch_breaks_locality_only_when_enabled():
    grid = VideoGrid(2, 8, 8)
    x, ctx = inputs(grid), make_ctx(grid)
    inside = (window_ids(grid, 2, 2) == 0).reshape(-1)
    y = x.clone()
    y[:, ~inside] += torch.randn_like(y[:, ~inside])
    for use_global, local_only in ((False, True), (True, False)):
        s = UltraGenAttention(
            DIM,
            HEADS,
            0,
            use_hierarchical=False,
            use_global=use_global,
            lora=LoRAOptions(rank=4),
            local_windows=WindowOptions(counts=[[2, 2]]),
            global_compression=CompressionOptions(factor=2),
        )
        attn = layer(s)
        same = torch.allclose(attn(x, ctx)[:, inside], attn(y, ctx)[:, inside], atol=1e-6)
        assert same is local_only


@pytest.mark.parametrize(
    "flags", [dict(padding=Padding("replicate"), lora=KAIMING), RELEASE], ids=["replicate", "release"]
)
def test_batch_elements_are_independent(flags):
    grid = VideoGrid(2, 7, 10)
    attn = layer(UltraGenAttention(DIM, HEADS, 1, **flags))
    x, ctx = inputs(grid, batch=3), make_ctx(grid, batch=3)
    both = attn(x, ctx)
    for b in range(3):
        single = make_ctx(grid, batch=3)
        single.timestep_freq = single.timestep_freq[b : b + 1]
        torch.testing.assert_close(both[b : b + 1], attn(x[b : b + 1], single), rtol=1e-5, atol=1e-5)


def tiny_dit(attention, **kw) -> WanDiT:
    torch.manual_seed(0)
    return WanDiT(4, 8, **{**TINY_NET, "num_layers": 4, **kw}, attention=attention)


def test_gradients_reach_every_strategy_parameter():
    attention = partial(
        UltraGenAttention,
        local_windows=WindowOptions(counts=[[2, 2], [3, 3]]),
        hier_windows=WindowOptions(counts=[[1, 1], [2, 2]]),
        padding=Padding("replicate"),
        lora=LoRAOptions(rank=4, targets=["q", "k", "v", "o"]),
    )
    net = tiny_dit(attention, full_attention_layers=[0])
    x, t, text = torch.randn(2, 4, 2, 12, 12), torch.tensor([100.0, 900.0]), torch.randn(2, 3, 8)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(3):  # zero-initialised head, LoRA B and gate outputs block some gradients for the first steps
        opt.zero_grad()
        (net(x, t, text) - x).pow(2).mean().backward()
        opt.step()
    strategy = {n: p for n, p in net.named_parameters() if ".strategy." in n}
    # 3 blocks x (2 branches x (4 LoRAs x A, B + 2 convs x weight, bias) + 2 gates x 3 Linears x weight, bias)
    assert len(strategy) == 3 * (2 * (4 * 2 + 2 * 2) + 2 * 6)
    dead = [n for n, p in strategy.items() if p.grad is None or p.grad.abs().sum() == 0]
    assert not dead


def test_plain_wan_state_dict_loads_with_only_strategy_keys_missing():
    wan = tiny_dit(FullAttention)
    net = tiny_dit(partial(UltraGenAttention, **RELEASE), full_attention_layers=[0, 3])
    missing, unexpected = net.load_state_dict(wan.state_dict(), strict=False)
    assert not unexpected and missing and all(".self_attn.strategy." in k for k in missing)
    assert {k.split(".")[1] for k in missing} == {"1", "2"}
    for key, value in wan.state_dict().items():
        assert torch.equal(net.state_dict()[key], value)


#################################################################################
#                               Experiment YAMLs                                #
#################################################################################


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_experiment_yaml_builds_a_tiny_dit(path):
    config = yaml.safe_load(path.read_text())
    net_cfg = config["model"]["net"]
    net_cfg.setdefault("class_path", "ultragen.models.wan.WanDiT")
    net_cfg["init_args"] = {**TINY_NET, **net_cfg["init_args"]}
    parser = ArgumentParser()
    parser.add_argument("--net", type=Callable[[int, int], WanDiT])
    net = parser.instantiate(parser.parse_object({"net": net_cfg})).net(4, 8)
    assert len(net.blocks) == 30
    full = {i % 30 for i in net_cfg["init_args"]["full_attention_layers"]}
    assert {i for i, b in enumerate(net.blocks) if type(b.self_attn.strategy) is FullAttention} >= full
    if path.stem.startswith("t3_"):  # window counts are those of the released 4K grids; see test_cost.py
        return
    x = torch.randn(1, 4, 2, 12, 20)
    out = net(x, torch.tensor([500.0]), torch.randn(1, 3, 8))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_ablation_yamls_differ_from_the_1080p_preset_only_in_their_switch():
    def strategy(stem):  # block 3 of the experiment stacked on Wan2.1-1.3B, at the test width
        config = read_config([CONFIGS.parent / "model" / "wan2.1_t2v_1.3b.yaml", CONFIGS / f"{stem}.yaml"])
        return layer_strategies(config, dim=DIM, num_heads=HEADS, device="cpu")[3]

    base = strategy("ultragen_1080p")
    for stem, check in {
        "ablation_no_global": lambda s: s.global_branch is None,
        "ablation_no_hierarchical": lambda s: s.hier_branch is None,
        "ablation_no_lora": lambda s: s.global_branch.lora is None,
        "ablation_no_cross_window": lambda s: (s.local_branch.windows.counts, s.hier_branch.windows.counts)
        == (((4, 4),), ((2, 2),)),
        "ablation_swin_local": lambda s: s.local_branch.shifted,
    }.items():
        s = strategy(stem)
        assert check(s) and not check(base), stem
        assert s.local_branch.padding.policy == base.local_branch.padding.policy == "replicate"


#################################################################################
#                              Gate logging callback                            #
#################################################################################


class GatedModule(L.LightningModule):
    """Minimal module exposing `net` like VideoDiffusionModule."""

    def __init__(self):
        super().__init__()
        self.net = tiny_dit(
            partial(
                UltraGenAttention,
                local_windows=WindowOptions(counts=[[2, 2]]),
                hier_windows=WindowOptions(counts=[[1, 1]]),
                lora=KAIMING,
            ),
            num_layers=2,
            full_attention_layers=[0],
        )

    def step(self, batch):
        x = torch.randn(1, 4, 1, 8, 8)
        return (self.net(x, batch.float() * 100, torch.randn(1, 3, 8)) - x).pow(2).mean()

    def training_step(self, batch, batch_idx):
        return self.step(batch)

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.step(batch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def test_gate_logger_writes_layer_scalars_and_timestep_sweep(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger

    from ultragen.lit.gates import GateLogger

    loader = torch.utils.data.DataLoader(torch.arange(1, 5), batch_size=1)
    logger = TensorBoardLogger(tmp_path, name="gates")
    trainer = L.Trainer(
        max_steps=2,
        logger=logger,
        callbacks=[GateLogger(timesteps=[0, 500, 1000])],
        accelerator="cpu",
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1,
        val_check_interval=2,
    )
    module = GatedModule()
    trainer.fit(module, loader, loader)
    scalars = EventAccumulator(logger.log_dir).Reload().Tags()["scalars"]
    assert {"gates/layer_1/global", "gates/layer_1/hierarchical", "gates/layer_1/local"} <= set(scalars)
    assert not any(t.startswith("gates/layer_0") for t in scalars)  # layer 0 keeps full attention
    sweep = EventAccumulator(str(Path(logger.log_dir) / "gates" / "step_2")).Reload()
    events = {tag: sweep.Scalars(tag) for tag in sweep.Tags()["scalars"]}
    assert [e.step for e in events["gates_vs_t/layer_1/global"]] == [0, 500, 1000]
    branches = ("global", "hierarchical", "local")
    totals = [sum(events[f"gates_vs_t/layer_1/{b}"][i].value for b in branches) for i in range(3)]
    assert totals == pytest.approx([1.0, 1.0, 1.0], abs=1e-5)
    expected = GateLogger(timesteps=[0, 500, 1000]).gate_values(module.net)[1]["hierarchical"]
    assert [e.value for e in events["gates_vs_t/layer_1/hierarchical"]] == pytest.approx(expected.tolist())
