"""Activation checkpointing that DeepSpeed ZeRO-3 can shard: recomputation, gradients, names, 2-process run."""

import copy
import os
import re
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ultragen.lit.export import export_dit, merge_lora
from ultragen.lit.recipe import checkpoint_blocks, checkpoint_interval, select_trainable
from ultragen.models.attention import LoRAOptions, Padding, UltraGenAttention, WindowOptions
from ultragen.models.wan import WanDiT

ROOT = Path(__file__).resolve().parents[2]


def tiny_ultragen_dit() -> WanDiT:
    attention = partial(UltraGenAttention, local_windows=WindowOptions(counts=[[2, 2], [3, 3]]),
                        hier_windows=WindowOptions(counts=[[2, 2], [3, 3]]), lora=LoRAOptions(rank=8),
                        padding=Padding("replicate"))

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


def test_merge_lora_gives_the_adapted_network_under_wan_names():
    adapted = select_trainable(tiny_ultragen_dit(), "lora", rank=4, alpha=8)
    for name, p in adapted.named_parameters():
        if "lora_B" in name:  # peft starts B at zero
            torch.nn.init.normal_(p, std=0.1)
    plain = tiny_ultragen_dit()
    plain.load_state_dict(merge_lora(adapted.state_dict(), alpha=8))  # strict: Wan's names only
    x, t, c = torch.randn(2, 8, 2, 16, 16), torch.tensor([100.0, 900.0]), torch.randn(2, 5, 12)
    with torch.no_grad():
        torch.testing.assert_close(plain(x, t, c), adapted(x, t, c), rtol=1e-4, atol=1e-5)


def fit_two_processes(tmp_path: Path, *args: str, steps: int = 2) -> tuple[Path, str]:
    """`ultragen fit` of the tiny UltraGen DiT for `steps` steps on 2 gloo processes; its last.ckpt and its log."""
    # a fresh rendezvous: an earlier in-process distributed test leaves MASTER_PORT (its store still listening) behind
    inherited = {k: v for k, v in os.environ.items()
                 if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK")}
    env = inherited | {"DS_ACCELERATOR": "cpu", "TORCH_EXTENSIONS_DIR": str(ROOT / ".torch_extensions")}
    run = subprocess.run(
        [sys.executable, "-m", "ultragen", "fit", "-c", "configs/debug/tiny.yaml", "-c", "configs/debug/tiny_ultragen.yaml",
         *args, "--trainer.devices=2", "--model.activation_checkpointing=blocks", f"--trainer.max_steps={steps}",
         "--trainer.limit_val_batches=0", f"--trainer.logger.init_args.save_dir={tmp_path}",
         "--trainer.logger.init_args.version=run"],
        cwd=ROOT, env=env, timeout=600, capture_output=True, text=True,
    )
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    return tmp_path / "tiny" / "run" / "checkpoints" / "last.ckpt", log


def tiny_ultragen_module():
    """A fresh VideoDiffusionModule of the tiny UltraGen config, built as `ultragen fit` builds it."""
    from ultragen.lit.cli import UltraGenCLI

    return UltraGenCLI(args=["-c", "configs/debug/tiny.yaml", "-c", "configs/debug/tiny_ultragen.yaml"], run=False).model


def pretrained_weights(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """Starting weights with a non-zero head (Wan zero-inits it, which would keep frozen-base modes from learning)."""
    state = {k: v.clone() for k, v in tiny_ultragen_module().net.state_dict().items()}
    state["head.head.weight"] = torch.randn_like(state["head.head.weight"]) * 0.1
    save_file(state, tmp_path / "init.safetensors")
    return tmp_path / "init.safetensors", state


def load_export(ckpt: Path, tmp_path: Path, initial: dict[str, torch.Tensor], trainable: str) -> None:
    """The checkpoint's export loads strictly into a fresh tiny UltraGen DiT: what the mode trains moved from
    `initial`, what it freezes did not."""
    weights = load_file(export_dit(ckpt, tmp_path / "dit.safetensors"))
    tiny_ultragen_module().net.load_state_dict(weights)  # strict: every tensor of the sharded run, Wan's names
    moved = {k for k, v in weights.items() if not torch.equal(v, initial[k])}
    strategy = {k for k in weights if ".strategy." in k}
    if trainable == "strategy":  # only the UltraGen block's own weights
        assert moved and moved <= strategy
    else:
        assert "blocks.1.self_attn.q.weight" in moved  # trained directly, or through its merged LoRA adapter
        assert ("head.head.weight" in moved) == (trainable == "all")


@pytest.mark.slow
@pytest.mark.parametrize("trainable", ["all", "strategy", "lora"])
def test_zero3_with_activation_checkpointing_trains_on_two_processes_and_exports(tmp_path, monkeypatch, trainable):
    """The documented 4K path: ZeRO-3, every block checkpointed, UltraGen attention, 2 gloo processes."""
    monkeypatch.chdir(ROOT)
    init, initial = pretrained_weights(tmp_path)
    ckpt, _ = fit_two_processes(tmp_path, "-c", "configs/trainer/deepspeed_cpu.yaml", "--trainer.strategy.stage=3",
                                f"--model.trainable={trainable}", f"--model.net_weights={init}")
    shards = sorted(p.name for p in (ckpt / "checkpoint").glob("zero_pp_rank_*_model_states.pt"))
    assert shards == ["zero_pp_rank_0_mp_rank_00_model_states.pt", "zero_pp_rank_1_mp_rank_00_model_states.pt"]
    load_export(ckpt, tmp_path, initial, trainable)


@pytest.mark.slow
@pytest.mark.parametrize("trainable", ["all", "strategy", "lora"])
def test_fsdp2_with_activation_checkpointing_trains_on_two_processes_and_exports(tmp_path, monkeypatch, trainable):
    """FSDP2 through Lightning's ModelParallelStrategy: blocks sharded and checkpointed, one gathered checkpoint
    whose export (LoRA merged) loads into a plain WanDiT."""
    monkeypatch.chdir(ROOT)
    init, initial = pretrained_weights(tmp_path)
    ckpt, log = fit_two_processes(tmp_path, "-c", "configs/trainer/fsdp2_cpu.yaml", f"--model.trainable={trainable}",
                                  f"--model.net_weights={init}")
    assert "FSDP2: 2 DiT blocks sharded over 2 ranks" in log and ckpt.is_file()
    load_export(ckpt, tmp_path, initial, trainable)


def test_exclude_frozen_parameters_saves_only_trained_tensors_and_export_completes_them_from_the_base(
    tmp_path, monkeypatch
):
    from ultragen.cli import main
    from ultragen.lit.cli import UltraGenCLI

    monkeypatch.chdir(ROOT)
    init, initial = pretrained_weights(tmp_path)
    configs = ["-c", "configs/debug/tiny.yaml", "-c", "configs/debug/tiny_ultragen.yaml"]
    main(["fit", *configs, "--trainer.max_steps=2", "--trainer.limit_val_batches=0", "--model.trainable=lora",
          f"--model.net_weights={init}", "--model.exclude_frozen_parameters=true",
          f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.logger.init_args.version=run"])
    ckpt = tmp_path / "tiny" / "run" / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert saved and all("lora_" in k for k in saved)  # the adapters only: no base weight, codec or text encoder
    with pytest.raises(ValueError, match="holds only the trained tensors .* with --base"):
        export_dit(ckpt, tmp_path / "partial.safetensors")
    weights = load_file(export_dit(ckpt, tmp_path / "dit.safetensors", base=init))
    tiny_ultragen_module().net.load_state_dict(weights)  # strict: complete
    moved = {k for k, v in weights.items() if not torch.equal(v, initial[k])}
    assert "blocks.1.self_attn.q.weight" in moved and "head.head.weight" not in moved
    with pytest.raises(ValueError, match="set model.net_weights to the run's base weights"):
        tiny_ultragen_module().on_load_checkpoint(torch.load(ckpt, map_location="cpu", weights_only=True))
    run = ["--model.trainable=lora", f"--model.net_weights={init}", "--model.exclude_frozen_parameters=true"]
    resumed = UltraGenCLI(args=[*configs, *run], run=False).model
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    resumed.on_load_checkpoint(checkpoint)
    resumed.load_state_dict(checkpoint["state_dict"])  # strict: the frozen weights came back from net_weights
    assert torch.equal(resumed.net.head.head.weight, initial["head.head.weight"])
    assert torch.equal(resumed.net.blocks[1].self_attn.q.lora_B.default.weight,
                       saved["net.blocks.1.self_attn.q.lora_B.default.weight"])


@pytest.mark.slow
def test_zero2_lora_run_without_frozen_parameters_resumes_and_exports(tmp_path, monkeypatch):
    """DeepSpeed writes only the adapters; the resumed run rebuilds the rest from net_weights."""
    monkeypatch.chdir(ROOT)
    init, initial = pretrained_weights(tmp_path)
    run = ["-c", "configs/trainer/deepspeed_cpu.yaml", "--model.trainable=lora", f"--model.net_weights={init}",
           "--model.exclude_frozen_parameters=true"]
    ckpt, _ = fit_two_processes(tmp_path, *run)
    module = torch.load(ckpt / "checkpoint" / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=True)
    assert module["module"] and all("lora_" in k for k in module["module"])
    ckpt, log = fit_two_processes(tmp_path, *run, f"--ckpt_path={ckpt}", steps=3)
    assert "Restoring states from the checkpoint path" in log
    assert torch.load(ckpt / "checkpoint" / "mp_rank_00_model_states.pt", weights_only=True)["global_step"] == 3
    weights = load_file(export_dit(ckpt, tmp_path / "dit.safetensors", base=init))
    tiny_ultragen_module().net.load_state_dict(weights)
    assert torch.equal(weights["head.head.weight"], initial["head.head.weight"])
    assert not torch.equal(weights["blocks.1.self_attn.q.weight"], initial["blocks.1.self_attn.q.weight"])


def test_the_dit_is_built_on_first_use_with_the_rng_state_of_init(monkeypatch):
    """Built lazily (the Trainer builds it in configure_model, inside the strategy's sharding context), the DiT
    starts from the same weights however much of the global RNG was drawn in between, and leaves that RNG alone."""
    monkeypatch.chdir(ROOT)
    early, late = tiny_ultragen_module(), tiny_ultragen_module()
    assert "net" not in early._modules and not any(k.startswith("net.") for k in early.state_dict())
    reference = early.net.state_dict()
    torch.rand(1000)  # draws that an eager build would have shifted
    state = torch.get_rng_state()
    late.configure_model()
    net = late.net
    late.configure_model()  # idempotent
    assert late.net is net and torch.equal(torch.get_rng_state(), state)
    assert reference.keys() == net.state_dict().keys()
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in reference.items())


def partition_lines(log: str) -> dict[int, tuple[int, int, int]]:
    """rank -> (elements held, partitioned elements, whole elements) from the ZeRO-3 build's log lines."""
    found = re.findall(r"rank (\d) holds (\d+) of the (\d+) partitioned DiT parameter elements \(\+ (\d+) whole\)", log)
    return {int(r): (int(a), int(b), int(c)) for r, a, b, c in found}


def zero3_state(ckpt: Path) -> dict[str, torch.Tensor]:
    """The DiT tensors of a ZeRO-3 checkpoint directory, gathered to fp32 under the module's names (LoRA unmerged)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt))
    return {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}


def wan_layout_weights(path: Path) -> dict[str, torch.Tensor]:
    """A plain Wan2.1-layout file (no strategy tensors) for the tiny UltraGen DiT, away from its seeded weights."""
    state = tiny_ultragen_module().net.state_dict()
    weights = {k: v + torch.randn_like(v) for k, v in state.items() if ".strategy." not in k}
    save_file(weights, path)
    return weights


def assert_equal_states(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    differ = [k for k in want if not torch.equal(got[k], want[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:4]}"


ZERO3_LR0 = ["-c", "configs/trainer/deepspeed_cpu.yaml", "--trainer.strategy.stage=3",
             "--model.optimizer.init_args.lr=0"]


@pytest.mark.slow
def test_zero3_builds_the_dit_partitioned_with_the_seeded_weights(tmp_path, monkeypatch):
    """Under ZeRO-3 each rank holds only its partition of the DiT from its construction on (zero.Init around
    configure_model), and the weights it starts from (one step at lr 0) are the plain seeded build's, bit for bit,
    the UltraGen strategy's own initialisation included."""
    monkeypatch.chdir(ROOT)
    ckpt, log = fit_two_processes(tmp_path, *ZERO3_LR0, steps=1)
    held = partition_lines(log)
    plain = tiny_ultragen_module().net
    total = sum(p.numel() for p in plain.parameters())
    assert sorted(held) == [0, 1], log[-3000:]
    for elements, partitioned, whole in held.values():
        assert partitioned == total and whole == 0
        assert elements <= sum(-(-p.numel() // 2) for p in plain.parameters())  # half of each tensor, rounded up
    assert "built outside deepspeed.zero.Init" not in log
    assert_equal_states(zero3_state(ckpt), plain.state_dict())


@pytest.mark.slow
def test_zero3_loads_net_weights_module_by_module_then_adds_lora(tmp_path, monkeypatch):
    """net_weights under ZeRO-3 (a plain Wan2.1-layout file: no strategy tensors) reach the partitioned DiT as
    written; the strategy's fresh tensors and peft's LoRA adapters are the plain build's; activation checkpointing
    on (fit_two_processes)."""
    monkeypatch.chdir(ROOT)
    file = wan_layout_weights(tmp_path / "wan.safetensors")
    run = ["--model.trainable=lora", f"--model.net_weights={tmp_path / 'wan.safetensors'}"]
    ckpt, log = fit_two_processes(tmp_path, *ZERO3_LR0, *run, steps=1)
    assert f"loaded {len(file)} tensors" in log and "new strategy parameters, initialised fresh" in log
    from ultragen.lit.cli import UltraGenCLI

    plain = UltraGenCLI(args=["-c", "configs/debug/tiny.yaml", "-c", "configs/debug/tiny_ultragen.yaml", *run],
                        run=False).model.net.state_dict()
    state = zero3_state(ckpt)
    assert_equal_states(state, plain)
    for key, value in file.items():  # under peft's names where an adapter wraps the layer
        stem, _, param = key.rpartition(".")
        assert torch.equal(state.get(key, state.get(f"{stem}.base_layer.{param}")), value), key
    held = partition_lines(log)  # the adapters were built whole, outside zero.Init
    assert sorted(held) == [0, 1] and all(whole > 0 for _, _, whole in held.values())


@pytest.mark.slow
def test_fsdp2_builds_the_dit_on_rank_0_alone_and_broadcasts_it_into_the_shards(tmp_path, monkeypatch):
    """Under FSDP2 only rank 0 builds the DiT whole (seeded, net_weights, LoRA), rank 1 on the meta device; after
    sharding, rank 0's tensors fill both ranks' shards: the run starts (one step at lr 0) from the plain build."""
    monkeypatch.chdir(ROOT)
    file = wan_layout_weights(tmp_path / "wan.safetensors")
    run = ["--model.trainable=lora", f"--model.net_weights={tmp_path / 'wan.safetensors'}"]
    ckpt, log = fit_two_processes(tmp_path, "-c", "configs/trainer/fsdp2_cpu.yaml", "--model.optimizer.init_args.lr=0",
                                  *run, steps=1)
    assert "FSDP2: rank 0 built the DiT whole" in log and "FSDP2: rank 1 built the DiT on the meta device" in log
    from ultragen.lit.cli import UltraGenCLI

    plain = UltraGenCLI(args=["-c", "configs/debug/tiny.yaml", "-c", "configs/debug/tiny_ultragen.yaml", *run],
                        run=False).model.net.state_dict()
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert_equal_states({k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}, plain)
