"""Rectified-flow training objective and the Euler/CFG sampler (Wan / DiffSynth conventions)."""

from ultragen.diffusion.flow_matching import FlowMatching, shift_sigmas
from ultragen.diffusion.sampler import EulerSampler, inference_schedule

__all__ = ["EulerSampler", "FlowMatching", "inference_schedule", "shift_sigmas"]
