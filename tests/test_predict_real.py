"""`ultragen predict` through the real CLI with the real component classes at tiny random sizes.

WanVAE (diffusers AutoencoderKLWan, tiled decode) + UMT5Encoder (transformers, loaded from disk) + WanDiT whose
weights come from a diffusers-layout `transformer/` folder through `model.net_weights`.
"""

from pathlib import Path

import av
import pytest
import torch
import yaml
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from safetensors.torch import save_file

from ultragen.cli import main
from ultragen.codecs.wan_vae import DEBUG_CONFIG
from ultragen.models.wan import WanDiT

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr("sys.argv", ["ultragen"])


def test_predict_writes_mp4_per_prompt_with_configured_size(tmp_path, caplog, save_random_umt5):
    torch.manual_seed(0)
    umt5 = save_random_umt5(tmp_path / "umt5", ["a red fox runs through snow", "waves at sunset", "a city at night"])
    dit = WanDiT(in_dim=4, text_dim=32, dim=64, ffn_dim=128, num_heads=4, num_layers=2, freq_dim=64)  # tiny.yaml net
    torch.nn.init.normal_(dit.head.head.weight, std=0.02)  # Wan zero-initialises it: make the velocity non-trivial
    weights = tmp_path / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.parent.mkdir()
    save_file(convert_wan_transformer_to_diffusers(dict(dit.state_dict())), weights)
    overrides = {
        "model": {
            "codec": {
                "class_path": "ultragen.codecs.wan_vae.WanVAE",
                "init_args": {"config": DEBUG_CONFIG, "tile_size": [32, 32], "tile_stride": [16, 16], "progress": True},
            },
            "text_encoder": {
                "class_path": "ultragen.text.umt5.UMT5Encoder",
                "init_args": {"path": str(umt5), "max_length": 16, "dtype": "float32"},
            },
            "sampling": {"frames": 9, "height": 48, "width": 64, "fps": 12, "steps": 2, "guidance_scale": 5.0},
        },
    }
    config = tmp_path / "real_tiny.yaml"
    config.write_text(yaml.safe_dump(overrides))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox runs through snow\nwaves at sunset\n")
    out = tmp_path / "videos"
    main(["predict", "-c", "configs/debug/tiny.yaml", "-c", str(config), f"--data.init_args.prompts={prompts}",
          f"--trainer.logger.init_args.save_dir={tmp_path}", f"--trainer.callbacks.output_dir={out}",
          f"--model.net_weights={weights.parent}"])
    assert f"loaded {len(dit.state_dict())} tensors from {weights.parent} (format diffusers)" in caplog.text

    files = sorted(out.glob("*.mp4"))
    assert [f.name for f in files] == ["00000_a_red_fox_runs_through_snow.mp4", "00001_waves_at_sunset.mp4"]
    for f in files:
        with av.open(str(f)) as container:
            stream = container.streams.video[0]
            frames = [fr.to_ndarray(format="rgb24") for fr in container.decode(stream)]
            assert stream.average_rate == 12
        assert len(frames) == 9 and frames[0].shape == (48, 64, 3)
