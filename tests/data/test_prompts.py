"""Prompt files for `predict`: text-only lines, jsonl with first-frame images, image fitting, image-to-video."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.io import write_png

from ultragen.data.prompts import PromptDataModule, PromptDataset, fit_image, read_prompt_entries

ROOT = Path(__file__).resolve().parents[2]


def test_txt_and_jsonl_entries_with_images_relative_to_the_file(tmp_path):
    (tmp_path / "a.txt").write_text("a red ball\n\n  a blue cube  \n")
    assert read_prompt_entries(str(tmp_path / "a.txt")) == [("a red ball", None), ("a blue cube", None)]
    write_png(torch.zeros(3, 4, 4, dtype=torch.uint8), str(tmp_path / "first.png"))
    lines = [{"prompt": "a red ball", "image": "first.png"}, {"prompt": "a blue cube"}]
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    entries = read_prompt_entries(str(tmp_path / "p.jsonl"))
    assert entries == [("a red ball", str((tmp_path / "first.png").resolve())), ("a blue cube", None)]
    items = PromptDataset(str(tmp_path / "p.jsonl"))
    assert items[0]["first_frame"].shape == (3, 4, 4) and "first_frame" not in items[1]
    with pytest.raises(ValueError, match="batch_size=2 with image-to-video prompts"):
        PromptDataModule(str(tmp_path / "p.jsonl"), batch_size=2).predict_dataloader()


@pytest.mark.parametrize("line,message", [
    ("{not json", r"p.jsonl:2: not JSON"),
    ('{"caption": "x"}', r'p.jsonl:2: needs a "prompt" string'),
    ('{"prompt": "x", "image": "missing.png"}', r"p.jsonl:2: image 'missing.png' not found"),
])
def test_bad_jsonl_lines_are_named_by_file_and_line(tmp_path, line, message):
    (tmp_path / "p.jsonl").write_text('{"prompt": "fine"}\n' + line + "\n")
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        read_prompt_entries(str(tmp_path / "p.jsonl"))


def test_fit_image_maps_to_unit_range_and_centre_crops_a_covering_resize():
    image = torch.arange(2 * 8, dtype=torch.uint8).view(1, 1, 2, 8).expand(1, 3, 2, 8) * 16
    fitted = fit_image(image, 2, 4)  # covering size is the image itself: a pure centre crop
    torch.testing.assert_close(fitted, image[..., 2:6].float() / 127.5 - 1)
    assert fit_image(torch.full((1, 3, 5, 7), 255, dtype=torch.uint8), 8, 8).shape == (1, 3, 8, 8)
    assert torch.equal(fit_image(torch.zeros(1, 3, 2, 2, dtype=torch.uint8), 2, 2), torch.full((1, 3, 2, 2), -1.0))


def test_image_to_video_keeps_the_first_frame_and_denoises_the_rest(monkeypatch):
    from ultragen.lit.cli import UltraGenCLI

    monkeypatch.chdir(ROOT)
    module = UltraGenCLI(args=["-c", "configs/debug/tiny.yaml", "--model.sampling.steps=2"], run=False).model.eval()
    torch.nn.init.normal_(module.net.head.head.weight, std=0.1)  # Wan zero-inits the head: make the output depend on x
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.integers(0, 256, (1, 3, 64, 64), dtype=np.uint8))
    video = module.generate(["a red disc"], [0], first_frames=fit_image(image, 64, 64))
    assert torch.equal(video[:, :, 0], image)  # the pixel codec decodes the held latent frame exactly
    text_only = module.generate(["a red disc"], [0])
    assert not torch.equal(text_only[:, :, 0], image) and not torch.equal(video[:, :, 1:], text_only[:, :, 1:])
    with pytest.raises(ValueError, match=r"first frames of size \(32, 32\) do not match the sampling size"):
        module.generate(["a red disc"], [0], first_frames=torch.zeros(1, 3, 32, 32))
