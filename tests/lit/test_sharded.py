"""Activation checkpointing that DeepSpeed ZeRO-3 can shard: recomputation, gradients, names, 2-process run."""

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ultragen.lit.export import export_dit
from ultragen.lit.recipe import checkpoint_blocks, checkpoint_interval
from ultragen.models.attention import UltraGenAttention
from ultragen.models.wan import WanDiT

ROOT = Path(__file__).resolve().parents[2]


def tiny_ultragen_dit() -> WanDiT:
    def attention(dim, heads, layer):
        return UltraGenAttention(dim, heads, layer, local_windows=[[2, 2], [3, 3]], hier_windows=[[2, 2], [3, 3]],
                                 global_factor=4, hier_factor=2, lora_rank=8, pad="replicate", freq_dim=64)

    torch.manual_seed(0)
    net = WanDiT(8, 12, dim=32, ffn_dim=64, num_heads=2, num_layers=4, freq_dim=64, attention=attention,
                 full_attention_layers=[0])
    torch.nn.init.normal_(net.head.head.weight, std=0.1)  # Wan zero-inits the head; make gradients flow
    return net


def test_checkpointed_blocks_are_recomputed_with_identical_gradients_and_names():
    reference = tiny_ultragen_dit()
    net = copy.deepcopy(reference)
    assert checkpoint_blocks(net, 2) == [0, 2]
    calls = [0] * 4
    for i, block in enumerate(net.blocks):
        block.ffn.register_forward_pre_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    x, t, c = torch.randn(2, 8, 2, 16, 16), torch.tensor([100.0, 900.0]), torch.randn(2, 5, 12)
    for model in (reference, net):
        model(x, t, c).square().mean().backward()
    assert calls == [2, 1, 2, 1]  # chosen blocks run again in backward
    assert list(net.state_dict()) == list(reference.state_dict())  # no wrapper module, Wan's names
    for (name, p), q in zip(reference.named_parameters(), net.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("setting,want", [("none", 0), ("blocks", 1), (3, 3)])
def test_checkpoint_interval(setting, want):
    assert checkpoint_interval(setting) == want


def test_bad_checkpoint_interval_names_the_choices():
    with pytest.raises(ValueError, match=r"activation_checkpointing=0 is not supported; use 'none', 'blocks'"):
        checkpoint_interval(0)


@pytest.mark.slow
def test_zero3_with_activation_checkpointing_trains_on_two_processes_and_exports(tmp_path, monkeypatch):
    """The documented 4K path: ZeRO-3, every block checkpointed, UltraGen attention, 2 gloo processes."""
    monkeypatch.chdir(ROOT)
    # a fresh rendezvous: an earlier in-process distributed test leaves MASTER_PORT (its store still listening) behind
    inherited = {k: v for k, v in os.environ.items()
                 if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK")}
    env = inherited | {"DS_ACCELERATOR": "cpu", "TORCH_EXTENSIONS_DIR": str(ROOT / ".torch_extensions")}
    subprocess.run(
        [sys.executable, "-m", "ultragen", "fit", "-c", "configs/debug/tiny.yaml", "-c", "configs/debug/tiny_ultragen.yaml",
         "-c", "configs/trainer/deepspeed_cpu.yaml", "--trainer.strategy.stage=3", "--trainer.devices=2",
         "--model.activation_checkpointing=blocks", "--trainer.max_steps=2", "--trainer.limit_val_batches=0",
         f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.logger.init_args.version=run"],
        cwd=ROOT, env=env, check=True, timeout=600,
    )
    ckpt = tmp_path / "tiny" / "run" / "checkpoints" / "last.ckpt"
    shards = sorted(p.name for p in (ckpt / "checkpoint").glob("zero_pp_rank_*_model_states.pt"))
    assert shards == ["zero_pp_rank_0_mp_rank_00_model_states.pt", "zero_pp_rank_1_mp_rank_00_model_states.pt"]
    weights = load_file(export_dit(ckpt, tmp_path / "dit.safetensors"))
    from ultragen.lit.cli import UltraGenCLI

    fresh = UltraGenCLI(args=["-c", "configs/debug/tiny.yaml", "-c", "configs/debug/tiny_ultragen.yaml"], run=False)
    fresh.model.net.load_state_dict(weights)  # strict: every tensor of the sharded run, under Wan's names
    assert not torch.equal(weights["head.head.weight"], torch.zeros_like(weights["head.head.weight"]))  # trained
