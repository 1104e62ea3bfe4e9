"""Flow matching: x_t = (1 - σ)·x_0 + σ·ε, velocity target ε - x_0, shifted discrete σ sampling.

The network predicts the velocity (Wan's parameterisation, the default) or the clean sample x_0
(`prediction: x0`); an x_0 prediction is turned into a velocity v̂ = (x_t - x̂_0) / max(σ, min_sigma), so the
loss and the sampler see velocities either way. x_0 prediction suits parameter-free pixel codecs: a small
network's residual error then stays in the image instead of becoming per-pixel noise at the last steps.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor


LOSS_WEIGHTINGS = ("none", "diffsynth", "x0")


def shift_sigmas(sigma: Tensor, shift: float) -> Tensor:
    """σ' = shift·σ / (1 + (shift - 1)·σ) (Wan/DiffSynth timestep shift)."""
    return shift * sigma / (1 + (shift - 1) * sigma)


class FlowMatching:
    """Training side of rectified flow as in DiffSynth's FlowMatchScheduler (training mode).

    σ_j = shift(linspace(1, 0, T + 1)[:-1])_j, t_j = T·σ_j, j ~ Uniform{0..T-1}. Loss weights w(t_j) on the
    velocity MSE (each table normalised to mean 1, so the learning rate keeps its meaning):
    - `diffsynth`: w ∝ y_j - min y, y_j = exp(-2·((t_j - T/2) / T)²) (DiffSynth; zero at both ends of the schedule);
    - `x0`: w ∝ max(σ_j, min_sigma)², which turns the velocity MSE into the MSE of the implied x_0
      (v̂ - v = (x_0 - x̂_0) / σ): weight moves to high noise, where the caption decides the layout;
    - `none`: w = 1.
    """

    def __init__(
        self,
        shift: float = 5.0,
        num_train_timesteps: int = 1000,
        loss_weighting: Literal["none", "diffsynth", "x0"] = "diffsynth",
        prediction: Literal["velocity", "x0"] = "velocity",
        min_sigma: float = 0.05,
    ):
        if shift <= 0:
            raise ValueError(f"shift={shift} must be positive (Wan uses 5.0)")
        if prediction not in ("velocity", "x0"):
            raise ValueError(f"prediction={prediction!r} is not supported; choose 'velocity' (Wan) or 'x0'")
        if not 0 < min_sigma <= 1:
            raise ValueError(f"min_sigma={min_sigma} must be in (0, 1]")
        if loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"loss_weighting={loss_weighting!r} is not supported; choose one of {list(LOSS_WEIGHTINGS)}")
        self.prediction, self.min_sigma = prediction, min_sigma
        self.shift = shift
        self.num_train_timesteps = num_train_timesteps
        base = torch.linspace(1.0, 0.0, num_train_timesteps + 1, dtype=torch.float64)[:-1]
        self.sigmas = shift_sigmas(base, shift).float()  # (T,)
        self.timesteps = self.sigmas * num_train_timesteps
        if loss_weighting == "diffsynth":
            y = torch.exp(-2 * ((self.timesteps - num_train_timesteps / 2) / num_train_timesteps) ** 2)
            y = y - y.min()
        elif loss_weighting == "x0":
            y = self.sigmas.clamp_min(min_sigma) ** 2
        else:
            y = torch.ones_like(self.sigmas)
        self.weights = y * num_train_timesteps / y.sum()  # (T,), mean 1

    def sample(self, batch: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Random training levels: (σ (B,), t (B,), loss weight (B,)) on the CPU."""
        j = torch.randint(0, self.num_train_timesteps, (batch,), generator=generator)
        return self.sigmas[j], self.timesteps[j], self.weights[j]

    @staticmethod
    def add_noise(x0: Tensor, noise: Tensor, sigma: Tensor) -> Tensor:
        """x_t = (1 - σ)·x_0 + σ·ε with σ (B,) broadcast over the remaining dims."""
        s = sigma.to(x0).view(-1, *([1] * (x0.dim() - 1)))
        return (1 - s) * x0 + s * noise

    def velocity(self, pred: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """The network output as a velocity at timesteps t (B,) in [0, num_train_timesteps]."""
        if self.prediction == "velocity":
            return pred
        sigma = (t.to(x_t.dtype) / self.num_train_timesteps).clamp_min(self.min_sigma)
        return (x_t - pred) / sigma.view(-1, *([1] * (x_t.dim() - 1)))

    @staticmethod
    def target(x0: Tensor, noise: Tensor) -> Tensor:
        """Velocity target ε - x_0."""
        return noise - x0

    def loss(self, pred: Tensor, target: Tensor, weight: Tensor, mask: Tensor | None = None) -> Tensor:
        """Per-sample MSE weighted by w(t) (see the class docstring), averaged over the batch; with `mask`
        (broadcastable to pred, 1 = counted), each sample's MSE is over its counted elements only."""
        err = (pred.float() - target.float()).pow(2)
        if mask is None:
            mse = err.flatten(1).mean(1)  # (B,)
        else:
            mask = mask.to(err).expand_as(err)
            mse = (err * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1)
        return (mse * weight.to(mse)).mean()
