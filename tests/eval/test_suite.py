"""Metric suite: names are validated, missing weight files skip their metrics with one actionable warning each,
and with (random-weight) backbones present every metric is computed. No pretrained weights are used."""

import logging

import pytest
import torch
import torchvision
from torch import nn
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

from ultragen.eval import (
    METRICS,
    MetricSettings,
    MetricWeights,
    clip_score,
    compute_metrics,
    load_clip,
    patch_clip_iqa,
    temporal_clip,
)


def noise_video(frames: int, height: int, width: int, seed: int) -> torch.Tensor:
    """(F, H, W, 3) uint8 uniform noise."""
    return torch.randint(0, 256, (frames, height, width, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def random_clip_dir(tmp_path_factory):
    """A tiny random-weight CLIP (32 px images, a letters-only vocabulary: one token per character) saved as a
    transformers directory, only to check the loading and embedding mechanics."""
    folder = tmp_path_factory.mktemp("clip")
    letters = [chr(c) + end for end in ("", "</w>") for c in range(ord("a"), ord("z") + 1)]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1} | {token: i + 2 for i, token in enumerate(letters)}
    text = dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=8)
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)).save_pretrained(folder)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=CLIPTokenizer(vocab=vocab, merges=[])).save_pretrained(folder)
    return folder


class StatsI3D(nn.Module):
    """TorchScript stand-in with the I3D call signature: per-channel mean and std of each clip -> (B, 6)."""

    def forward(self, x: torch.Tensor, rescale: bool, resize: bool, return_features: bool) -> torch.Tensor:
        return torch.cat([x.mean((2, 3, 4)), x.std((2, 3, 4))], dim=1)


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory, random_clip_dir):
    """A random-weight SqueezeNet (LPIPS backbone), a statistics stand-in for I3D and the random CLIP, saved as files
    only to check mechanics."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), folder / "squeeze.pth")
    torch.jit.script(StatsI3D()).save(str(folder / "i3d.pt"))
    return MetricWeights(lpips=str(folder / "squeeze.pth"), fvd=str(folder / "i3d.pt"), clip=str(random_clip_dir))


def test_unknown_metric_names_raise_listing_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown metrics \['hd_psnr'\]; choose from \['hd_mse'"):
        compute_metrics(["hd_mse", "hd_psnr"], [noise_video(2, 32, 32, 0)])


def test_inputs_are_checked():
    video = noise_video(2, 32, 32, 0)
    with pytest.raises(ValueError, match="one prompt per video: got 0 for 1"):
        compute_metrics(["clip_score"], [video])
    with pytest.raises(ValueError, match="hd_fvd needs reference videos"):
        compute_metrics(["hd_fvd"], [video])


def test_missing_weight_files_skip_their_metrics_with_one_named_warning_each(tmp_path, caplog, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default paths (checkpoints/metrics/...) are relative: none exists here
    lpips = tmp_path / "nowhere" / "alexnet.pth"
    video = noise_video(3, 64, 64, 0)
    with caplog.at_level(logging.WARNING, logger="ultragen.eval"):
        values, skipped = compute_metrics(list(METRICS), [video], [video, video], ["a cat"],
                                          weights=MetricWeights(lpips=str(lpips)))
    assert set(values) == {"hd_mse", "temporal_ssim"}
    assert set(skipped) == {"hd_lpips", "hd_fvd", "clip_score", "temporal_clip", "patch_clip_iqa"}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3  # one per missing file; CLIP serves two metrics
    lpips_msg, fvd_msg, clip_msg = warnings
    assert str(lpips) in lpips_msg and "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth" in lpips_msg
    assert "MetricWeights.lpips" in lpips_msg and lpips_msg.endswith("skipping hd_lpips")
    assert str(tmp_path / "checkpoints/metrics/i3d_torchscript.pt") in fvd_msg and "dropbox.com" in fvd_msg
    assert str(tmp_path / "checkpoints/metrics/clip-vit-large-patch14/config.json") in clip_msg
    assert "openai/clip-vit-large-patch14" in clip_msg and clip_msg.endswith("skipping clip_score, temporal_clip, patch_clip_iqa")
    assert skipped["hd_lpips"] in lpips_msg and skipped["clip_score"] == skipped["temporal_clip"]
    r3d = compute_metrics(["hd_fvd"], [video], [video], settings=MetricSettings(fvd_backbone="r3d_18"))[1]
    assert str(tmp_path / "checkpoints/metrics/r3d_18-b3b3357e.pth") in r3d["hd_fvd"]


def test_clip_mechanics(random_clip_dir):
    """Random-weight CLIP: consecutive identical frames have cosine 1; the score of a static video is the cosine
    of its frame's and its prompt's embeddings, different per prompt."""
    clip = load_clip(random_clip_dir)
    assert clip.processor.tokenizer("a red ball")["input_ids"][0] == 0 and len(set(clip.texts(["ab", "ba"]))) == 2
    static = noise_video(1, 40, 56, 0).expand(4, 40, 56, 3)
    assert temporal_clip(static, clip) == pytest.approx(1.0, abs=1e-5)
    assert temporal_clip(noise_video(4, 40, 56, 1), clip) < 1 - 1e-4
    frame = clip.images(static[:1].permute(0, 3, 1, 2))[0]
    scores = [clip_score(static, prompt, clip) for prompt in ("a red ball", "two cats")]
    assert scores == pytest.approx([float(frame @ clip.texts([p])[0]) for p in ("a red ball", "two cats")], abs=1e-5)
    assert abs(scores[0] - scores[1]) > 1e-4 and all(-1 <= s <= 1 for s in scores)


def test_every_metric_is_computed_when_the_weights_exist(random_weights, caplog):
    """Random-weight backbones (see the fixture) only check that the suite wires every metric; values are not
    meaningful. Videos differ in size; 32 px patches and 4-frame clips keep it cheap."""
    generated = [noise_video(4, 64, 64, 0), noise_video(5, 64, 96, 1)]  # 4 + 6 patch-clips
    references = [noise_video(4, 64, 64, 2), noise_video(4, 64, 64, 3)]  # 4 + 4
    settings = MetricSettings(lpips_net="squeeze", patch=32, clip_frames=4, frames=1, scales=(5,), batch=16)
    with caplog.at_level(logging.WARNING):
        values, skipped = compute_metrics(list(METRICS), generated, references, ["a cat", "a dog"], random_weights,
                                          settings)
    assert skipped == {} and not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert set(values) == set(METRICS) | {"hd_fvd_patches", "hd_fvd_reference_patches", "hd_fvd_coverage"}
    assert (values["hd_fvd_patches"], values["hd_fvd_reference_patches"], values["hd_fvd_coverage"]) == (10, 8, 1.0)
    assert all(isinstance(v, float) and v == v for v in values.values())


class BrightnessClip:
    """A weight-free stand-in with ClipFeatures' interface: a patch's embedding is (a, sqrt(1 - a²)) with a its mean
    value / 255; "Good photo." embeds as (1, 0) and "Bad photo." as (0, 1). It records the patch shapes it sees."""

    def __init__(self):
        self.shapes = []

    def images(self, frames):
        self.shapes += [tuple(f.shape) for f in frames]
        a = frames.float().mean((1, 2, 3)) / 255
        return torch.stack([a, (1 - a**2).sqrt()], dim=1)

    def texts(self, texts):
        assert list(texts) == ["Good photo.", "Bad photo."]
        return torch.eye(2)


def test_patch_clip_iqa_scores_native_patches_with_the_antonym_softmax():
    """Frames of 2x3 patches of 32 px (plus an 8 px remainder, cut off centred), brightness 0.6 in every patch:
    each patch scores softmax(100 * [0.6, 0.8])[0] = sigmoid(-20); two sampled frames -> 12 native patches."""
    video = torch.full((3, 72, 104, 3), 153, dtype=torch.uint8)  # 153 / 255 = 0.6
    clip = BrightnessClip()
    score = patch_clip_iqa(video, clip, MetricSettings(patch=32, frames=2))
    assert score == pytest.approx(torch.sigmoid(torch.tensor(100 * (0.6 - 0.8))).item(), rel=1e-4)
    assert clip.shapes == [(3, 32, 32)] * 12
    video[:, 4:36, 4:36] = 255  # the first patch of each frame (centred grid starts at 4, 4) is white: scores ~1
    assert patch_clip_iqa(video, BrightnessClip(), MetricSettings(patch=32, frames=2)) == pytest.approx(
        (1 + 5 * torch.sigmoid(torch.tensor(-20.0)).item()) / 6, rel=1e-4)
