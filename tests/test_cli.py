"""The real `ultragen` CLI on the tiny CPU config: fit, validate, test, predict."""

from pathlib import Path

import av
import pytest
import torch

from ultragen.cli import main

TINY = "configs/debug/tiny.yaml"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr("sys.argv", ["ultragen"])


def run(*args: str) -> None:
    main(list(args))


def test_fit_fast_dev_run(tmp_path):
    run("fit", "-c", TINY, "--trainer.fast_dev_run=1", f"--trainer.logger.init_args.save_dir={tmp_path}")


def test_fit_then_predict_writes_playable_mp4(tmp_path):
    run("fit", "-c", TINY, "--trainer.max_steps=2", "--trainer.val_check_interval=2", "--trainer.limit_val_batches=1",
        "--trainer.log_every_n_steps=1",
        f"--trainer.logger.init_args.save_dir={tmp_path}")
    ckpts = sorted(tmp_path.rglob("*.ckpt"))
    assert ckpts, "fit wrote no checkpoint"
    state = torch.load(ckpts[0], map_location="cpu", weights_only=True)["state_dict"]
    assert state and not any(k.startswith(("text_encoder.", "codec.")) for k in state)
    assert any(k.startswith("net.blocks.0.self_attn.q") for k in state)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next(tmp_path.rglob("events.out.tfevents.*"))))
    events.Reload()
    assert {"train/loss", "val/loss", "train/grad_norm", "train/tokens_per_s"} <= set(events.Tags()["scalars"])
    assert "samples" in events.Tags()["images"]  # sample video (animated GIF summary)

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a large red circle moving left to right on a black background\n\na green square\n")
    out = tmp_path / "videos"
    run("predict", "-c", TINY, f"--ckpt_path={ckpts[0]}", f"--data.init_args.prompts={prompts}",
        "--model.sampling.steps=2", f"--trainer.logger.init_args.save_dir={tmp_path}",
        f"--trainer.callbacks.output_dir={out}")
    files = sorted(out.glob("*.mp4"))
    assert [f.name for f in files] == ["00000_a_large_red_circle_moving_left_to_right_on_a_bla.mp4",
                                       "00001_a_green_square.mp4"]
    with av.open(str(files[0])) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 9 and frames[0].shape == (64, 64, 3)


def test_test_subcommand_reports_loss(tmp_path):
    run("test", "-c", TINY, "--trainer.limit_test_batches=1", f"--trainer.logger.init_args.save_dir={tmp_path}")


def test_data_token_budget_must_match_codec():
    from types import SimpleNamespace

    from ultragen.data.buckets import TokenBudget
    from ultragen.lit.cli import UltraGenCLI

    module = UltraGenCLI(args=["-c", TINY], run=False).model  # PixelCodec(4, 4), patch (1, 2, 2)
    module._trainer = SimpleNamespace(datamodule=SimpleNamespace(budget=TokenBudget(1000, 4, 4, (1, 2, 2))))
    module.setup("fit")
    module._trainer = SimpleNamespace(datamodule=SimpleNamespace(budget=TokenBudget(1000, 4, 8, (1, 2, 2))))
    with pytest.raises(ValueError, match=r"set data.init_args.temporal_factor/spatial_factor/patch to match"):
        module.setup("fit")


def test_fit_with_ema_weight_averaging(tmp_path):
    run("fit", "-c", TINY, "--trainer.max_steps=2", "--trainer.limit_val_batches=0",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--trainer.callbacks+=lightning.pytorch.callbacks.EMAWeightAveraging", "--trainer.callbacks.decay=0.9")
    ckpt = torch.load(next(tmp_path.rglob("last.ckpt")), map_location="cpu", weights_only=True)
    assert any("EMAWeightAveraging" in key for key in ckpt["callbacks"])
