"""Flow matching: x_t = (1 - σ)·x_0 + σ·ε, velocity target ε - x_0, shifted discrete σ sampling."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor


def shift_sigmas(sigma: Tensor, shift: float) -> Tensor:
    """σ' = shift·σ / (1 + (shift - 1)·σ) (Wan/DiffSynth timestep shift)."""
    return shift * sigma / (1 + (shift - 1) * sigma)


class FlowMatching:
    """Training side of rectified flow as in DiffSynth's FlowMatchScheduler (training mode).

    σ_j = shift(linspace(1, 0, T + 1)[:-1])_j, t_j = T·σ_j, j ~ Uniform{0..T-1}; optional DiffSynth loss weight
    w(t_j) = T·(y_j - min y) / Σ(y - min y), y_j = exp(-2·((t_j - T/2) / T)²).
    """

    def __init__(
        self,
        shift: float = 5.0,
        num_train_timesteps: int = 1000,
        loss_weighting: Literal["none", "diffsynth"] = "diffsynth",
    ):
        if shift <= 0:
            raise ValueError(f"shift={shift} must be positive (Wan uses 5.0)")
        self.shift = shift
        self.num_train_timesteps = num_train_timesteps
        self.loss_weighting = loss_weighting
        base = torch.linspace(1.0, 0.0, num_train_timesteps + 1, dtype=torch.float64)[:-1]
        self.sigmas = shift_sigmas(base, shift).float()  # (T,)
        self.timesteps = self.sigmas * num_train_timesteps
        y = torch.exp(-2 * ((self.timesteps - num_train_timesteps / 2) / num_train_timesteps) ** 2)
        y = y - y.min()
        self.weights = y * num_train_timesteps / y.sum()

    def sample(self, batch: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Random training levels: (σ (B,), t (B,), loss weight (B,)) on the CPU."""
        j = torch.randint(0, self.num_train_timesteps, (batch,), generator=generator)
        return self.sigmas[j], self.timesteps[j], self.weights[j]

    @staticmethod
    def add_noise(x0: Tensor, noise: Tensor, sigma: Tensor) -> Tensor:
        """x_t = (1 - σ)·x_0 + σ·ε with σ (B,) broadcast over the remaining dims."""
        s = sigma.to(x0).view(-1, *([1] * (x0.dim() - 1)))
        return (1 - s) * x0 + s * noise

    @staticmethod
    def target(x0: Tensor, noise: Tensor) -> Tensor:
        """Velocity target ε - x_0."""
        return noise - x0

    def loss(self, pred: Tensor, target: Tensor, weight: Tensor) -> Tensor:
        """Per-sample MSE, weighted by w(t) when loss_weighting='diffsynth', averaged over the batch."""
        mse = (pred.float() - target.float()).pow(2).flatten(1).mean(1)  # (B,)
        if self.loss_weighting == "diffsynth":
            mse = mse * weight.to(mse)
        return mse.mean()
