"""HD metrics: Fréchet distance against scipy, HD-MSE against analytic values, the HD-FVD patch tiling, the
temporal SSIM, and the backbone loaders' mechanics. No pretrained weights are used: where a test builds a
network it says so, and such networks only check mechanics (shapes, wiring, identities), never values."""

import numpy as np
import pytest
import scipy.linalg
import torch
import torchvision
from scipy import ndimage
from torch import nn

from ultragen.eval import (
    MetricSettings,
    frechet_distance,
    hd_fvd,
    hd_lpips,
    hd_mse,
    load_lpips,
    load_video_backbone,
    patch_clips,
    patch_tiling,
    resample,
    temporal_ssim,
    uniform_frames,
)


def checkerboard(frames: int, height: int, width: int, cell: int) -> torch.Tensor:
    """(F, H, W, 3) uint8 checkerboard of 0 and 255 with square cells of `cell` pixels (period 2 * cell)."""
    y, x = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    board = ((y // cell + x // cell) % 2 * 255).to(torch.uint8)
    return board[None, :, :, None].expand(frames, height, width, 3).contiguous()


def noise_video(frames: int = 4, height: int = 64, width: int = 96, seed: int = 0) -> torch.Tensor:
    """(F, H, W, 3) uint8 uniform noise."""
    return torch.randint(0, 256, (frames, height, width, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


#################################################################################
#                               Fréchet distance                                #
#################################################################################


def scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """Float64 reference: |mu_a - mu_b|^2 + tr(S_a + S_b - 2 sqrtm(S_a S_b))."""
    mu_a, mu_b, s_a, s_b = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(s_a @ s_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * root))


def test_frechet_distance_matches_scipy_sqrtm():
    rng = np.random.default_rng(0)
    dim = 12
    mix_a, mix_b = rng.normal(size=(dim, dim)), rng.normal(size=(dim, dim))
    a = rng.normal(size=(400, dim)) @ mix_a + 0.5
    b = rng.normal(size=(300, dim)) @ mix_b - 0.2
    ours, reference = frechet_distance(torch.from_numpy(a), torch.from_numpy(b)), scipy_frechet(a, b)
    assert reference > 1.0
    assert ours == pytest.approx(reference, rel=1e-6)
    assert frechet_distance(torch.from_numpy(b), torch.from_numpy(a)) == pytest.approx(reference, rel=1e-6)


def test_frechet_distance_of_identical_sets_is_zero():
    a = torch.from_numpy(np.random.default_rng(1).normal(size=(200, 16)) * 3.0)
    assert abs(frechet_distance(a, a)) < 1e-8 * float(torch.cov(a.T).trace())


def test_frechet_distance_rejects_bad_shapes():
    with pytest.raises(ValueError, match="N, M >= 2"):
        frechet_distance(torch.zeros(1, 4), torch.zeros(5, 4))
    with pytest.raises(ValueError, match=r"\(N, D\) and \(M, D\)"):
        frechet_distance(torch.zeros(5, 4), torch.zeros(5, 3))


#################################################################################
#                                     HD-MSE                                    #
#################################################################################


def test_hd_mse_of_a_constant_video_is_zero():
    video = torch.full((3, 70, 100, 3), 77, dtype=torch.uint8)  # sizes not divisible by 32 on purpose
    for settings in (MetricSettings(), MetricSettings(down="bicubic", up="bilinear")):
        assert hd_mse(video, settings) == pytest.approx(0.0, abs=1e-6)


def test_hd_mse_of_a_checkerboard_is_analytic():
    """A checkerboard of 2-px cells (period 4, dividing 8, 16 and 32) on a 64x96 frame: every area block of 2^k x 2^k
    holds as many 0 as 255 pixels, so down_{2^k} is the constant 127.5, bicubic up keeps it, and each k adds
    MSE = 127.5^2 (0.25 on [0, 1]): HD-MSE = 3 * 16256.25 = 48768.75 for k in {3, 4, 5}."""
    video = checkerboard(4, 64, 96, cell=2)
    assert hd_mse(video) == pytest.approx(3 * 127.5**2, rel=1e-6)
    assert hd_mse(video, MetricSettings(value_range=1.0)) == pytest.approx(0.75, rel=1e-6)
    assert hd_mse(video, MetricSettings(scales=(4,))) == pytest.approx(127.5**2, rel=1e-6)
    assert hd_mse(video.permute(3, 0, 1, 2)) == pytest.approx(3 * 127.5**2, rel=1e-6)  # (3, F, H, W) layout


@pytest.mark.parametrize("down, up", [("area", "bicubic"), ("bicubic", "bilinear")])
def test_resample_is_the_configured_down_up_pair(down, up):
    """The protocol pinned: down to (H // f, W // f) with `down` (bicubic antialiased), `up` back, clamp [0, 255]."""
    x = noise_video(2, 70, 100).permute(0, 3, 1, 2).float()
    low = torch.nn.functional.interpolate(x, size=(8, 12), mode=down,
                                          **({} if down == "area" else {"align_corners": False, "antialias": True}))
    expected = torch.nn.functional.interpolate(low, size=(70, 100), mode=up, align_corners=False).clamp(0, 255)
    assert torch.allclose(resample(x, 8, MetricSettings(down=down, up=up)), expected)


def test_hd_mse_rewards_sharpness():
    sharp = noise_video()
    blurred = torch.from_numpy(ndimage.gaussian_filter(sharp.numpy().astype(np.float64), sigma=(0, 3, 3, 0)))
    blurred = blurred.round().clamp(0, 255).to(torch.uint8)
    for settings in (MetricSettings(), MetricSettings(down="bicubic", up="bilinear")):
        assert hd_mse(sharp, settings) > 5 * hd_mse(blurred, settings) > 0


class MeanAbsDistance(nn.Module):
    """A weight-free stand-in for LPIPS: mean |a - b| per image pair -> (N, 1, 1, 1)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a - b).abs().mean((1, 2, 3), keepdim=True)


def test_hd_lpips_feeds_minus_one_to_one_and_sums_over_scales():
    """Checkerboard of 2-px cells: every resampled pixel is 127.5, i.e. 0 on [-1, 1], against +-1 in the frame, so a
    mean |a - b| distance gives 1 per scale: 3 over k in {3, 4, 5}."""
    assert hd_lpips(checkerboard(3, 64, 96, cell=2), MeanAbsDistance()) == pytest.approx(3.0, rel=1e-6)


def test_hd_mse_scores_only_the_sampled_frames():
    """With frames=2 only the first and last frame count: constant there, a checkerboard in between."""
    video = checkerboard(5, 64, 64, cell=2)
    video[[0, -1]] = 90
    assert hd_mse(video, MetricSettings(frames=2)) == pytest.approx(0.0, abs=1e-6)
    assert hd_mse(video, MetricSettings(frames=0)) == pytest.approx(3 / 5 * 3 * 127.5**2, rel=1e-6)


def test_uniform_frames():
    picks = uniform_frames(81, 16)
    assert len(set(picks)) == 16 and picks[0] == 0 and picks[-1] == 80 and picks == sorted(picks)
    assert uniform_frames(5, 16) == uniform_frames(5, 0) == [0, 1, 2, 3, 4]


def test_hd_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="smaller than the resampling factor 32"):
        hd_mse(torch.zeros(2, 16, 64, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="not uint8"):
        hd_mse(torch.zeros(2, 64, 64, 3))
    with pytest.raises(ValueError, match="down='nearest' is not supported"):
        MetricSettings(down="nearest")


#################################################################################
#                                 HD-FVD tiling                                 #
#################################################################################


@pytest.mark.parametrize(
    "height, width, rows, cols, top, left",
    [(1088, 1920, 4, 8, 96, 64), (2160, 3840, 9, 17, 72, 16)],
)
def test_patch_tiling_counts_and_coverage(height, width, rows, cols, top, left):
    center = patch_tiling(81, height, width)
    assert (center.rows, center.cols, center.count) == (rows, cols, rows * cols)
    assert center.coverage == pytest.approx(rows * cols * 224**2 / (height * width))
    assert (center.top, center.left) == (top, left)  # the dropped strip split evenly between both sides
    corner = patch_tiling(81, height, width, MetricSettings(remainder="corner"))
    assert (corner.top, corner.left, corner.count, corner.coverage) == (0, 0, center.count, center.coverage)


def test_patch_tiling_reference_numbers():
    """METHOD.md §3.5: 1088x1920 -> 32 patches covering 76.9%; 2160x3840 -> 153 covering 92.6%."""
    assert (patch_tiling(81, 1088, 1920).count, round(100 * patch_tiling(81, 1088, 1920).coverage, 1)) == (32, 76.9)
    assert (patch_tiling(29, 2160, 3840).count, round(100 * patch_tiling(29, 2160, 3840).coverage, 1)) == (153, 92.6)


def test_patch_tiling_frame_policies():
    uniform = patch_tiling(81, 1088, 1920)
    assert len(uniform.clips) == 1 and uniform.clips[0] == tuple(uniform_frames(81, 16))
    chunks = patch_tiling(81, 1088, 1920, MetricSettings(frame_policy="chunks"))
    assert chunks.clips == tuple(tuple(range(16 * c, 16 * c + 16)) for c in range(5))  # frame 80 dropped
    assert chunks.count == 5 * 32
    with pytest.raises(ValueError, match="holds no 224x224 patch"):
        patch_tiling(16, 200, 1920)
    with pytest.raises(ValueError, match="holds no 16-frame clip"):
        patch_tiling(9, 1088, 1920)


@pytest.mark.parametrize("remainder, top, left", [("center", 2, 1), ("corner", 0, 0)])
def test_patch_clips_cut_the_tiled_pixels(remainder, top, left):
    """Pixels encode (y, x, frame) in (R, G, B), so every patch-clip shows where it was cut from."""
    f, y, x = torch.meshgrid(torch.arange(6), torch.arange(20), torch.arange(27), indexing="ij")
    video = torch.stack([y, x, f], dim=-1).to(torch.uint8)  # (6, 20, 27, 3)
    settings = MetricSettings(patch=8, clip_frames=3, frame_policy="chunks", remainder=remainder)
    clips, tiling = patch_clips(video, settings)
    assert clips.shape == (tiling.count, 3, 3, 8, 8) == (2 * 2 * 3, 3, 3, 8, 8)
    for n, (c, r, q) in enumerate(np.ndindex(2, 2, 3)):  # clip-major, then rows, then columns
        assert clips[n, 0, 0, 0, 0] == top + 8 * r and clips[n, 1, 0, 0, 0] == left + 8 * q
        assert clips[n, 2, :, 0, 0].tolist() == [3 * c, 3 * c + 1, 3 * c + 2]
        assert clips[n, 0, 0, 7, 0] == top + 8 * r + 7 and clips[n, 1, 0, 0, 7] == left + 8 * q + 7


class ChannelStats(nn.Module):
    """A fixed, weight-free stand-in backbone: per-channel mean and std of each clip -> (B, 6)."""

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return torch.cat([clips.mean((2, 3, 4)), clips.std((2, 3, 4))], dim=1)


def test_hd_fvd_compares_patch_clip_sets():
    settings = MetricSettings(patch=16, clip_frames=4)
    generated = [noise_video(4, 48, 64, seed=s) for s in range(3)]  # 3x4 = 12 patches each
    same = hd_fvd(generated, generated, ChannelStats(), settings)
    assert abs(same.distance) < 1e-6
    assert (same.generated_patches, same.reference_patches, same.coverage) == (36, 36, 1.0)
    brighter = [(v.int() // 2 + 100).to(torch.uint8) for v in generated]
    shifted = hd_fvd(generated, brighter[:2], ChannelStats(), settings)
    assert shifted.distance > 100 and shifted.reference_patches == 24


#################################################################################
#                                 Temporal SSIM                                 #
#################################################################################


def test_temporal_ssim_is_one_for_a_static_video_and_lower_when_it_changes():
    smooth = ndimage.gaussian_filter(noise_video(1, 48, 64)[0].numpy().astype(np.float64), sigma=(2, 2, 0))
    smooth = torch.from_numpy((smooth - smooth.min()) / np.ptp(smooth) * 255).round().to(torch.uint8)
    static = smooth.expand(5, 48, 64, 3)
    assert temporal_ssim(static) == pytest.approx(1.0, abs=1e-5)
    drifting = torch.stack([torch.roll(smooth, shifts=s, dims=1) for s in range(5)])  # 1 px per frame
    changing = noise_video(5, 48, 64, seed=3)
    assert temporal_ssim(changing) < temporal_ssim(drifting) < 0.9
    assert temporal_ssim(changing, MetricSettings(batch=2)) == pytest.approx(temporal_ssim(changing), rel=1e-5)


#################################################################################
#                        Backbone loaders (random weights)                      #
#################################################################################


def test_lpips_loader_uses_the_local_backbone_file(tmp_path):
    """Random-weight SqueezeNet backbone saved to a file, only to check loading and the HD-LPIPS mechanics."""
    torch.manual_seed(0)
    state = torchvision.models.squeezenet1_1(weights=None).state_dict()
    torch.save(state, tmp_path / "squeeze.pth")
    lpips = load_lpips(tmp_path / "squeeze.pth", net="squeeze")
    assert torch.equal(lpips.net.slices[0][0].weight, state["features.0.weight"])
    assert torch.equal(getattr(lpips.net.slices[6], "12").expand1x1.weight, state["features.12.expand1x1.weight"])
    settings = MetricSettings(lpips_net="squeeze", frames=2)
    assert hd_lpips(torch.full((2, 64, 64, 3), 50, dtype=torch.uint8), lpips, settings) == pytest.approx(0, abs=1e-6)
    assert hd_lpips(noise_video(2, 64, 64), lpips, settings) > 0


def test_r3d_18_loader_gives_pooled_features(tmp_path):
    """Random-weight r3d_18 saved to a file, only to check loading and the (B, 512) feature mechanics."""
    torch.manual_seed(0)
    net = torchvision.models.video.r3d_18(weights=None)
    torch.save(net.state_dict(), tmp_path / "r3d.pth")
    backbone = load_video_backbone(tmp_path / "r3d.pth", "r3d_18")
    assert torch.equal(backbone.net.stem[0].weight, net.stem[0].weight)
    clips = torch.randint(0, 256, (2, 3, 4, 32, 32)).float()
    assert backbone(clips).shape == (2, 512)


class FakeI3D(nn.Module):
    """TorchScript stand-in with the StyleGAN-V I3D call signature; returns the clip mean, rejects other flags."""

    def forward(self, x: torch.Tensor, rescale: bool, resize: bool, return_features: bool) -> torch.Tensor:
        if rescale or resize or not return_features:
            raise RuntimeError("unexpected flags")
        return x.mean((1, 2, 3, 4)).unsqueeze(1)


def test_i3d_loader_feeds_minus_one_to_one(tmp_path):
    torch.jit.script(FakeI3D()).save(str(tmp_path / "i3d.pt"))
    backbone = load_video_backbone(tmp_path / "i3d.pt", "i3d")
    clips = torch.stack([torch.zeros(3, 2, 8, 8), torch.full((3, 2, 8, 8), 255.0)])
    assert backbone(clips).flatten().tolist() == [-1.0, 1.0]
