"""Kill and resume with the uninterrupted loss curve, atomic checkpoint files, export to safetensors, DeepSpeed ZeRO
on CPU."""

import csv
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ultragen.cli import main
from ultragen.lit.checkpoint_io import AtomicCheckpointIO
from ultragen.lit.export import export_dit
from ultragen.lit.resume import rng_states, set_rng_states

ROOT = Path(__file__).resolve().parents[2]
TINY = "configs/debug/tiny.yaml"


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr("sys.argv", ["ultragen"])


def fit(tmp_path, *extra):
    main(["fit", "-c", TINY, "--trainer.limit_val_batches=0", "--trainer.log_every_n_steps=1",
          f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.logger.init_args.version=run", *extra])


# Kill-and-resume runs: 6 batches an epoch (12 clips, batch 2), a checkpoint every 4 steps, EMA, every loss logged.
RESUME_RUN = """\
trainer:
  max_steps: 16
  limit_val_batches: 0
  num_sanity_val_steps: 0
  log_every_n_steps: 1
  enable_progress_bar: false
  enable_model_summary: false
  logger:
    class_path: lightning.pytorch.loggers.CSVLogger
    init_args: {name: tiny, flush_logs_every_n_steps: 1}
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {every_n_train_steps: 4, save_last: true, save_top_k: -1}
    - class_path: lightning.pytorch.callbacks.EMAWeightAveraging
      init_args: {decay: 0.9}
model:
  text_cache_size: 64
data:
  init_args: {train_size: 12, frames: 5, height: 32, width: 32}
"""


@pytest.fixture
def launch(tmp_path):
    """Starts `python -m ultragen fit -c tiny.yaml -c resume.yaml` processes (one thread each, so that two share
    the CPU; output in SAVE_DIR.log); any still running at the end are killed."""
    config, processes = tmp_path / "resume.yaml", []
    config.write_text(RESUME_RUN)

    def start(save_dir: Path, *extra: str) -> subprocess.Popen:
        command = [sys.executable, "-m", "ultragen", "fit", "-c", TINY, "-c", str(config),
                   f"--trainer.logger.init_args.save_dir={save_dir}", *extra]
        log = save_dir.parent / f"{save_dir.name}.log"
        with log.open("w") as out:
            process = subprocess.Popen(command, cwd=ROOT, env=os.environ | {"OMP_NUM_THREADS": "1"}, stdout=out,
                                       stderr=subprocess.STDOUT)
        process.log = log
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


def finish(process: subprocess.Popen, timeout: float = 300) -> None:
    assert process.wait(timeout) == 0, process.log.read_text()[-3000:]


def losses(run: Path) -> dict[int, float]:
    """step -> train/loss of a run's metrics.csv (which a resumed run starts anew)."""
    with open(run / "metrics.csv", newline="") as f:
        return {int(row["step"]): float(row["train/loss"]) for row in csv.DictReader(f) if row.get("train/loss")}


def kill_after_checkpoint(process: subprocess.Popen, run: Path, step: int, timeout: float = 300) -> None:
    """SIGKILL once last.ckpt holds `step` and two more steps were logged: between checkpoints, work lost."""
    deadline = time.monotonic() + timeout
    last = run / "checkpoints" / "last.ckpt"
    while time.monotonic() < deadline and process.poll() is None:
        if last.exists() and torch.load(last, weights_only=True)["global_step"] >= step:
            if (run / "metrics.csv").exists() and max(losses(run), default=0) >= step + 1:
                process.send_signal(signal.SIGKILL)
                process.wait()
                return
        time.sleep(0.05)
    output = process.log.read_text()[-3000:]
    raise AssertionError(f"no checkpoint at step {step} before the run ended or {timeout} s passed:\n{output}")


def assert_same_state(a: Path, b: Path) -> None:
    """Weights (EMA average and training copy), optimizer and scheduler states are bitwise equal."""
    a, b = (torch.load(p, map_location="cpu", weights_only=True) for p in (a, b))
    assert a["global_step"] == b["global_step"]
    for name in ("state_dict", "current_model_state"):
        assert a[name].keys() == b[name].keys()
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), f"{name}[{key!r}]"
    for sa, sb in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a["lr_schedulers"] == b["lr_schedulers"]


def test_killed_run_resumes_with_the_uninterrupted_loss_curve(tmp_path, launch):
    """A run SIGKILLed between checkpoints (mid-epoch) and restarted with `--ckpt_path last`, and a run resumed
    from an end-of-epoch checkpoint, log exactly the uninterrupted run's losses and end in its exact state."""
    reference, killed = launch(tmp_path / "reference"), launch(tmp_path / "killed", "--trainer.max_steps=1000")
    killed_run = tmp_path / "killed" / "tiny" / "version_0"
    kill_after_checkpoint(killed, killed_run, step=8)
    finish(reference)
    saved = torch.load(killed_run / "checkpoints" / "last.ckpt", weights_only=True)
    resume_step = saved["global_step"]
    assert resume_step in (8, 12) and max(losses(killed_run)) > resume_step  # steps after the checkpoint were lost
    position = saved["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert (position["epoch"], position["batches"]) == (1, resume_step - 6)  # mid-epoch at step 8

    reference_run = tmp_path / "reference" / "tiny" / "version_0"
    end_of_epoch = reference_run / "checkpoints" / "epoch=1-step=12.ckpt"
    resumed = launch(tmp_path / "killed", "--ckpt_path=last")  # finds version_0 by itself
    from_epoch_end = launch(tmp_path / "epoch_end", f"--ckpt_path={end_of_epoch}")
    finish(resumed)
    finish(from_epoch_end)

    expected = losses(reference_run)
    assert sorted(expected) == list(range(16))
    assert losses(killed_run) == {s: expected[s] for s in range(resume_step, 16)}  # exactly, no tolerance
    assert losses(tmp_path / "epoch_end" / "tiny" / "version_0") == {s: expected[s] for s in range(12, 16)}
    for run in (killed_run, tmp_path / "epoch_end" / "tiny" / "version_0"):
        assert_same_state(reference_run / "checkpoints" / "last.ckpt", run / "checkpoints" / "last.ckpt")


def test_global_rng_states_survive_a_weights_only_checkpoint(tmp_path):
    torch.save({"rng_states": rng_states()}, tmp_path / "rng.ckpt")
    draws = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_states(torch.load(tmp_path / "rng.ckpt", weights_only=True)["rng_states"])
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(draws[0], again[0]) and np.array_equal(draws[1], again[1]) and draws[2] == again[2]


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


def test_load_from_checkpoint_builds_the_dit_and_restores_it(tmp_path):
    """`load_from_checkpoint` builds the DiT through configure_model before loading; the frozen codec and text
    encoder, never saved, come from the config."""
    from ultragen.lit.cli import UltraGenCLI
    from ultragen.lit.module import VideoDiffusionModule

    fit(tmp_path, "--trainer.max_steps=1")
    ckpt = tmp_path / "tiny" / "run" / "checkpoints" / "last.ckpt"
    fresh = UltraGenCLI(args=["-c", TINY], run=False).model
    module = VideoDiffusionModule.load_from_checkpoint(ckpt, codec=fresh.codec, text_encoder=fresh.text_encoder)
    assert "net" in module._modules  # built by load_from_checkpoint, before the state was loaded
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    net = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
    assert net.keys() == module.net.state_dict().keys()
    assert all(torch.equal(v, module.net.state_dict()[k]) for k, v in net.items())
    assert not torch.equal(net["head.head.weight"], fresh.net.head.head.weight)  # trained, not the seeded start
