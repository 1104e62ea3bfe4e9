import pytest
import torch

from ultragen.diffusion import EulerSampler, FlowMatching, inference_schedule


def test_inference_schedule_matches_release_values():
    sigmas, t = inference_schedule(30, shift=5.0)
    assert sigmas.shape == (31,) and t.shape == (30,)
    torch.testing.assert_close(t[:3], torch.tensor([1000.0, 993.15, 985.92]), atol=0.01, rtol=0)
    torch.testing.assert_close(t[-2:], torch.tensor([263.16, 147.06]), atol=0.01, rtol=0)
    assert sigmas[-1] == 0 and (sigmas[1:] < sigmas[:-1]).all()


def test_euler_recovers_x0_with_exact_velocity():
    x0 = torch.randn(2, 4, 3, 5, 6)
    noise = torch.randn_like(x0)
    _, t_all = inference_schedule(7)

    def velocity(x, t, context):  # exact field of the straight path from x0: v = (x - x0) / σ
        sigma = (t / 1000).view(-1, 1, 1, 1, 1)
        return (x - x0) / sigma

    out = EulerSampler(steps=7, guidance_scale=1.0).sample(velocity, noise, context=torch.zeros(2, 1, 1))
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=1e-5)
    assert t_all[0] == 1000


def test_cfg_scale_one_equals_conditional_and_uses_negative_otherwise():
    noise = torch.randn(1, 2, 1, 2, 2)
    pos, neg = torch.ones(1, 1, 1), -torch.ones(1, 1, 1)
    velocity = lambda x, t, c: c.view(-1, 1, 1, 1, 1) * (x + 1)  # noqa: E731
    cond_only = EulerSampler(steps=4, guidance_scale=1.0).sample(velocity, noise, pos)
    cfg_one = EulerSampler(steps=4, guidance_scale=1.0).sample(velocity, noise, pos, negative=neg)
    assert torch.equal(cond_only, cfg_one)
    guided = EulerSampler(steps=4, guidance_scale=5.0).sample(velocity, noise, pos, negative=neg)
    assert not torch.allclose(guided, cond_only)


def test_training_noise_and_target_define_the_straight_path():
    flow = FlowMatching(shift=5.0)
    sigma, t, w = flow.sample(64, generator=torch.Generator().manual_seed(0))
    assert ((sigma > 0) & (sigma <= 1)).all() and torch.allclose(t, sigma * 1000)
    torch.testing.assert_close(flow.weights.mean(), torch.tensor(1.0), atol=1e-4, rtol=0)
    x0, eps = torch.randn(64, 3, 2), torch.randn(64, 3, 2)
    xt = flow.add_noise(x0, eps, sigma)
    torch.testing.assert_close(xt + (1 - sigma.view(-1, 1, 1)) * flow.target(x0, eps), eps)
    # shift 5 puts most training mass at high noise
    assert (flow.sigmas > 0.5).float().mean() > 0.8


def test_x0_prediction_is_converted_to_the_velocity_of_the_straight_path():
    x0, eps = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    t = torch.tensor([1000.0, 500.0, 10.0])
    flow = FlowMatching(prediction="x0", min_sigma=0.05)
    sigma = t / 1000
    xt = flow.add_noise(x0, eps, sigma)
    v = flow.velocity(x0, xt, t)  # a perfect x0 prediction
    torch.testing.assert_close(v[:2], flow.target(x0, eps)[:2])  # exact where σ >= min_sigma
    torch.testing.assert_close(v[2], (xt[2] - x0[2]) / 0.05)  # σ = 0.01 is clamped to 0.05
    assert torch.equal(FlowMatching().velocity(x0, xt, t), x0)  # velocity prediction passes through
    with pytest.raises(ValueError, match="prediction='eps'"):
        FlowMatching(prediction="eps")


def test_euler_with_x0_prediction_recovers_x0():
    x0, noise = torch.randn(2, 3, 2, 4, 4), torch.randn(2, 3, 2, 4, 4)
    flow = FlowMatching(prediction="x0")
    out = EulerSampler(steps=5, guidance_scale=1.0).sample(
        lambda x, t, c: flow.velocity(x0, x, t), noise, context=torch.zeros(2, 1, 1))
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=1e-5)


def test_x0_loss_weighting_is_the_mse_of_the_implied_x0():
    flow = FlowMatching(loss_weighting="x0", prediction="x0")
    sigma, t, w = flow.sample(16, generator=torch.Generator().manual_seed(1))
    x0, eps, x0_hat = torch.randn(16, 3, 4), torch.randn(16, 3, 4), torch.randn(16, 3, 4)
    xt = flow.add_noise(x0, eps, sigma)
    loss = flow.loss(flow.velocity(x0_hat, xt, t), flow.target(x0, eps), w)
    norm = flow.num_train_timesteps / flow.sigmas.clamp_min(0.05).pow(2).sum()  # weights have mean 1
    expected = (x0_hat - x0).pow(2).mean() * norm
    assert (sigma >= 0.05).all()
    torch.testing.assert_close(loss, expected)
    for weighting in ("none", "diffsynth", "x0"):
        torch.testing.assert_close(FlowMatching(loss_weighting=weighting).weights.mean(), torch.tensor(1.0))
    assert torch.equal(FlowMatching(loss_weighting="none").weights, torch.ones(1000))
    with pytest.raises(ValueError, match="loss_weighting='snr'"):
        FlowMatching(loss_weighting="snr")


def test_masked_loss_counts_only_the_kept_elements():
    flow = FlowMatching(loss_weighting="none")
    pred, target = torch.zeros(2, 3, 4, 2, 2), torch.zeros(2, 3, 4, 2, 2)
    pred[:, :, 0] = 2.0  # error 4 on frame 0 only
    weight = torch.ones(2)
    assert flow.loss(pred, target, weight).item() == pytest.approx(1.0)  # 4 over a quarter of the elements
    keep = torch.ones(2, 1, 4, 1, 1)
    keep[0, :, 0] = 0.0  # clip 0 drops frame 0, clip 1 keeps it
    assert flow.loss(pred, target, weight, keep).item() == pytest.approx((0.0 + 1.0) / 2)
