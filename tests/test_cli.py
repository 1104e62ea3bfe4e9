"""The real `ultragen` CLI on the tiny CPU config: fit, validate, test, predict."""

import math
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
    from ultragen.lit.cli import UltraGenCLI

    cli = UltraGenCLI(args=["fit", "-c", TINY, "--trainer.fast_dev_run=1",
                            f"--trainer.logger.init_args.save_dir={tmp_path}"])
    assert cli.trainer.state.finished and cli.trainer.global_step == 1
    loss = float(cli.trainer.callback_metrics["train/loss"])
    assert math.isfinite(loss) and loss > 0


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
    assert {"samples", "samples/by_step"} <= set(events.Tags()["images"])  # video (GIF) and prompts by step

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


def test_test_subcommand_generates_scores_and_writes_the_table(tmp_path):
    import csv
    import json

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run("test", "-c", TINY, "--trainer.limit_test_batches=1", f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--evaluation.steps=2", "--metrics=[hd_mse, temporal_ssim, hd_fvd]",
        f"--evaluation.weights.fvd={tmp_path / 'i3d.pt'}")
    (run_dir,) = {p.parent for p in tmp_path.rglob("test_metrics.json")}
    table = json.loads((run_dir / "test_metrics.json").read_text())
    objects = {"color_correct", "direction_correct", "count_error", "trajectory_error"}  # synthetic data has truth
    assert set(table["metrics"]) == {"hd_mse", "temporal_ssim"} | objects
    assert table["videos"] == table["with_truth"] == 2 and len(table["prompts"]) == 2
    assert all(math.isfinite(v) for v in table["metrics"].values()) and table["metrics"]["hd_mse"] > 0
    assert set(table["skipped"]) == {"hd_fvd"} and str(tmp_path / "i3d.pt") in table["skipped"]["hd_fvd"]
    with open(run_dir / "test_metrics.csv") as f:
        rows = {row["metric"]: row for row in csv.DictReader(f)}
    assert set(rows) == set(table["metrics"]) | {"hd_fvd"}
    assert float(rows["hd_mse"]["value"]) == table["metrics"]["hd_mse"] and rows["hd_fvd"]["skipped"]
    events = EventAccumulator(str(next(run_dir.glob("events.out.tfevents.*"))))
    events.Reload()
    assert {"test/loss", "test/hd_mse", "test/direction_correct", "hparams/hd_mse"} <= set(events.Tags()["scalars"])
    assert events.Scalars("test/hd_mse")[-1].value == pytest.approx(table["metrics"]["hd_mse"])
    assert "test/samples" in events.Tags()["images"] and "model/attention_cost/text_summary" in events.Tags()["tensors"]
    assert b"hparams/direction_correct" in events.PluginTagToContent("hparams")["_hparams_/experiment"]


def test_test_subcommand_rejects_unknown_metrics():
    from ultragen.lit.cli import ConfigError, UltraGenCLI

    with pytest.raises(ConfigError, match=r"unknown metrics \['hd_psnr'\]; choose from"):
        UltraGenCLI(args=["-c", TINY, "--metrics=[hd_mse, hd_psnr]"], run=False)


def test_prompt_seed_is_fixed_by_the_prompt_text():
    from ultragen.lit.evaluation import prompt_seed

    assert prompt_seed("a red circle") == prompt_seed("a red circle") == prompt_seed("a red circle", 7) - 7
    assert prompt_seed("a red circle") != prompt_seed("a blue circle")


def test_data_token_budget_must_match_codec():
    from types import SimpleNamespace

    from ultragen.data.buckets import TokenBudget
    from ultragen.lit.cli import UltraGenCLI

    module = UltraGenCLI(args=["-c", TINY], run=False).model  # PixelCodec(4, 4), patch (1, 2, 2)
    module._trainer = SimpleNamespace(strategy=None, datamodule=SimpleNamespace(budget=TokenBudget(1000, 4, 4, (1, 2, 2))))
    module.setup("fit")
    module._trainer = SimpleNamespace(strategy=None, datamodule=SimpleNamespace(budget=TokenBudget(1000, 4, 8, (1, 2, 2))))
    with pytest.raises(ValueError, match=r"set data.init_args.temporal_factor/spatial_factor/patch to match"):
        module.setup("fit")


def test_fit_with_ema_weight_averaging(tmp_path):
    run("fit", "-c", TINY, "--trainer.max_steps=2", "--trainer.limit_val_batches=0",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--trainer.callbacks+=lightning.pytorch.callbacks.EMAWeightAveraging", "--trainer.callbacks.decay=0.9")
    ckpt = torch.load(next(tmp_path.rglob("last.ckpt")), map_location="cpu", weights_only=True)
    assert any("EMAWeightAveraging" in key for key in ckpt["callbacks"])


def test_text_cache_returns_the_encoder_states_and_encodes_each_prompt_once(monkeypatch):
    from ultragen.lit.cli import UltraGenCLI

    module = UltraGenCLI(args=["-c", TINY, "--model.text_cache_size=2"], run=False).model
    encoder, seen = module.text_encoder.forward, []
    monkeypatch.setattr(module.text_encoder, "forward", lambda prompts: seen.append(list(prompts)) or encoder(prompts))
    first = module.encode_text(["a red circle", "a blue square", "a red circle"])
    assert seen == [["a red circle", "a blue square"]]
    torch.testing.assert_close(first, encoder(["a red circle", "a blue square", "a red circle"]))
    module.encode_text(["a red circle"])
    assert len(seen) == 1  # cached, and now the most recently used
    module.encode_text(["a green ring"])  # evicts the least recently used prompt ("a blue square")
    module.encode_text(["a red circle", "a blue square"])
    assert seen[1:] == [["a green ring"], ["a blue square"]]


def test_procedural_metrics_are_logged_with_a_frame_strip(tmp_path):
    strip = tmp_path / "strip.png"
    run("fit", "-c", TINY, "--trainer.max_steps=1", "--trainer.limit_val_batches=1", "--trainer.val_check_interval=1",
        "--trainer.num_sanity_val_steps=0", f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--trainer.callbacks+=ultragen.lit.callbacks.ProceduralMetrics", "--trainer.callbacks.num_videos=2",
        "--trainer.callbacks.steps=2", f"--trainer.callbacks.strip={strip}")
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next(tmp_path.rglob("events.out.tfevents.*"))))
    events.Reload()
    names = {"samples/color_correct", "samples/direction_correct", "samples/count_error", "samples/trajectory_error"}
    assert names <= set(events.Tags()["scalars"])
    assert all(math.isfinite(events.Scalars(n)[-1].value) and events.Scalars(n)[-1].value >= 0 for n in names)
    assert {"samples/strip", "samples/by_step"} <= set(events.Tags()["images"])
    width, height = Image.open(strip).size
    assert width >= 5 * 64 * 2 and height >= 2 * 64 * 2  # 5 frames of 2 videos at 2x


def test_ti2v_fit_with_first_frame_condition_then_image_to_video_predict(tmp_path):
    """TI2V through the CLI: a first-frame-conditioned fit, then a .jsonl prompt with an image whose mp4 starts with
    that image (within h264 tolerance); the text-only line beside it does not."""
    import numpy as np
    from torchvision.io import write_png

    run("fit", "-c", TINY, "--trainer.max_steps=2", "--trainer.limit_val_batches=0", "--model.first_frame_condition=0.5",
        f"--trainer.logger.init_args.save_dir={tmp_path}")
    (ckpt,) = sorted(tmp_path.rglob("last.ckpt"))
    yy, xx = np.mgrid[0:48, 0:80]
    image = np.stack([xx * 3, yy * 5, np.full_like(xx, 128)]).astype(np.uint8)  # smooth 48x80: resized and cropped
    write_png(torch.from_numpy(image), str(tmp_path / "first.png"))
    (tmp_path / "p.jsonl").write_text('{"prompt": "a red disc", "image": "first.png"}\n{"prompt": "a red disc"}\n')
    out = tmp_path / "videos"
    run("predict", "-c", TINY, f"--ckpt_path={ckpt}", f"--data.init_args.prompts={tmp_path / 'p.jsonl'}",
        "--model.sampling.steps=2", f"--trainer.logger.init_args.save_dir={tmp_path}",
        f"--trainer.callbacks.output_dir={out}")
    from ultragen.data.prompts import fit_image

    expected = ((fit_image(torch.from_numpy(image)[None], 64, 64)[0] + 1) * 127.5).permute(1, 2, 0).numpy()
    first_frames = []
    for path in sorted(out.glob("*.mp4")):
        with av.open(str(path)) as container:
            first_frames.append(next(container.decode(video=0)).to_ndarray(format="rgb24").astype(float))
    assert np.abs(first_frames[0] - expected).mean() < 3  # h264 at crf 18 on a smooth image
    assert np.abs(first_frames[1] - expected).mean() > 20
