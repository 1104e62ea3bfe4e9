"""Euler sampler with classifier-free guidance on the shifted Wan schedule."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ultragen.diffusion.flow_matching import shift_sigmas

VelocityFn = Callable[[Tensor, Tensor, Tensor], Tensor]  # (x, t (B,), context) -> v


def inference_schedule(steps: int, shift: float = 5.0, num_train_timesteps: int = 1000) -> tuple[Tensor, Tensor]:
    """σ' (steps + 1,) ending at 0 and timesteps t (steps,) = 1000·σ'[:-1] (DiffSynth, extra_one_step=True)."""
    if steps < 1:
        raise ValueError(f"steps={steps} must be >= 1")
    sigmas = shift_sigmas(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)[:-1], shift)
    sigmas = torch.cat([sigmas, sigmas.new_zeros(1)]).float()
    return sigmas, sigmas[:-1] * num_train_timesteps


class EulerSampler:
    """x ← x + v̂·(σ'_{i+1} - σ'_i) with v̂ = v(neg) + s·(v(pos) - v(neg)) as two separate passes."""

    def __init__(self, steps: int = 30, shift: float = 5.0, guidance_scale: float = 5.0):
        self.steps = steps
        self.shift = shift
        self.guidance_scale = guidance_scale

    @torch.no_grad()
    def sample(
        self, velocity: VelocityFn, noise: Tensor, context: Tensor, negative: Tensor | None = None, progress: bool = False
    ) -> Tensor:
        """Integrate from pure noise (σ = 1) to σ = 0; `negative` is required when guidance_scale != 1."""
        if self.guidance_scale != 1.0 and negative is None:
            raise ValueError(f"guidance_scale={self.guidance_scale} needs a negative context (or set it to 1.0)")
        sigmas, timesteps = inference_schedule(self.steps, self.shift)
        x = noise
        for i in tqdm(range(self.steps), desc="sampling", disable=not progress, leave=False):
            t = timesteps[i].expand(x.shape[0]).to(x.device)
            v = velocity(x, t, context)
            if self.guidance_scale != 1.0:
                v_neg = velocity(x, t, negative)
                v = v_neg + self.guidance_scale * (v - v_neg)
            x = x + v.to(x.dtype) * (sigmas[i + 1] - sigmas[i]).item()
        return x
