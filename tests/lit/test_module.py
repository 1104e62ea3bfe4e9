"""VideoDiffusionModule training options: first-frame conditioning (Wan2.2 TI2V)."""

from pathlib import Path

import pytest
import torch

from ultragen.lit.cli import UltraGenCLI
from ultragen.lit.module import first_frame_clean
from ultragen.models.attention import VideoGrid

ROOT = Path(__file__).resolve().parents[2]


def test_first_frame_clean_zeroes_the_first_frames_tokens_and_drops_it_from_the_loss():
    t, clean = torch.tensor([700.0, 300.0]), torch.tensor([True, False])
    token_t, mask = first_frame_clean(VideoGrid(3, 2, 2), t, clean)
    assert token_t.shape == (2, 12) and mask.shape == (2, 1, 3, 1, 1)
    assert token_t[0, :4].eq(0).all() and token_t[0, 4:].eq(700).all() and token_t[1].eq(300).all()
    assert mask[0, 0, :, 0, 0].tolist() == [0.0, 1.0, 1.0] and mask[1].eq(1).all()


def test_first_frame_condition_feeds_the_clean_frame_at_t_zero(monkeypatch):
    monkeypatch.chdir(ROOT)
    module = UltraGenCLI(args=["-c", "configs/debug/tiny.yaml", "--model.first_frame_condition=1.0"], run=False).model
    seen = {}
    module.net.register_forward_pre_hook(lambda m, args: seen.update(x=args[0].clone(), t=args[1].clone()))
    latents, text = torch.randn(2, module.net.in_dim, 3, 4, 4), torch.randn(2, 5, module.net.text_dim)
    loss = module.diffusion_loss(latents, text, torch.Generator().manual_seed(0))
    per_frame = 2 * 2  # 4x4 latent, 1x2x2 patch
    assert torch.equal(seen["x"][:, :, 0], latents[:, :, 0])  # clean
    assert not torch.equal(seen["x"][:, :, 1], latents[:, :, 1])  # noised
    assert seen["t"].shape == (2, 3 * per_frame) and seen["t"][:, :per_frame].eq(0).all()
    assert seen["t"][:, per_frame:].gt(0).all() and torch.isfinite(loss)

    def spoil_first_frame(m, args, out):
        out = out.clone()
        out[:, :, 0] += 100.0
        return out

    handle = module.net.register_forward_hook(spoil_first_frame)
    spoiled = module.diffusion_loss(latents, text, torch.Generator().manual_seed(0))
    handle.remove()
    torch.testing.assert_close(spoiled, loss)  # the clean frame is not scored
    with pytest.raises(ValueError, match="first_frame_condition=1.5 must be a probability"):
        UltraGenCLI(args=["-c", "configs/debug/tiny.yaml", "--model.first_frame_condition=1.5"], run=False)
