"""Resume from the last checkpoint, atomic checkpoint files, export to safetensors, DeepSpeed ZeRO on CPU."""

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ultragen.cli import main
from ultragen.lit.checkpoint_io import AtomicCheckpointIO
from ultragen.lit.export import export_dit

ROOT = Path(__file__).resolve().parents[2]
TINY = "configs/debug/tiny.yaml"


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr("sys.argv", ["ultragen"])


def fit(tmp_path, *extra):
    main(["fit", "-c", TINY, "--trainer.limit_val_batches=0", "--trainer.log_every_n_steps=1",
          f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.logger.init_args.version=run", *extra])


def test_killed_run_resumes_from_last_checkpoint(tmp_path):
    fit(tmp_path, "--trainer.max_steps=2")
    last = tmp_path / "tiny" / "run" / "checkpoints" / "last.ckpt"
    first = torch.load(last, map_location="cpu", weights_only=True)
    assert first["global_step"] == 2
    fit(tmp_path, "--trainer.max_steps=4", "--ckpt_path=last")
    resumed = torch.load(last, map_location="cpu", weights_only=True)
    assert resumed["global_step"] == 4
    assert resumed["lr_schedulers"][0]["last_epoch"] == 4  # scheduler state carried over, not restarted
    key = "net.blocks.0.ffn.0.weight"
    assert not torch.equal(first["state_dict"][key], resumed["state_dict"][key])


def test_atomic_checkpoint_io_keeps_previous_file_on_failure(tmp_path):
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}}, path)
    with pytest.raises(Exception):
        io.save_checkpoint({"state_dict": {"w": torch.ones(2)}, "bad": lambda: None}, path)  # unpicklable
    assert torch.equal(io.load_checkpoint(path)["state_dict"]["w"], torch.ones(2))
    assert os.listdir(tmp_path) == ["last.ckpt"]


def test_export_lightning_checkpoint_to_safetensors(tmp_path):
    fit(tmp_path, "--trainer.max_steps=1")
    ckpt = tmp_path / "tiny" / "run" / "checkpoints" / "last.ckpt"
    out = export_dit(ckpt, tmp_path / "dit.safetensors")
    weights = load_file(out)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert set(weights) == {k.removeprefix("net.") for k in state if k.startswith("net.")}
    assert "blocks.1.self_attn.norm_q.weight" in weights and "patch_embedding.weight" in weights
    torch.testing.assert_close(weights["head.head.weight"], state["net.head.head.weight"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_dit(tmp_path / "missing.ckpt", tmp_path / "x.safetensors")


@pytest.mark.slow
def test_deepspeed_zero2_on_cpu_and_export(tmp_path, monkeypatch):
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(ROOT / ".torch_extensions"))
    fit(tmp_path, "--trainer.max_steps=2", "--trainer.strategy=ultragen.lit.strategies.CPUDeepSpeedStrategy",
        "--trainer.strategy.stage=2")
    ckpt = tmp_path / "tiny" / "run" / "checkpoints" / "last.ckpt"
    assert ckpt.is_dir() and (ckpt / "latest").is_file()
    weights = load_file(export_dit(ckpt, tmp_path / "dit.safetensors"))
    assert "blocks.0.self_attn.q.weight" in weights and weights["blocks.0.self_attn.q.weight"].dtype == torch.float32
    torch.distributed.destroy_process_group()
