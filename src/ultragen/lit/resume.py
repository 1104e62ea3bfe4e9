"""Random state for exact resumption: per-batch training generators and the global RNG streams as plain tensors."""

from __future__ import annotations

import random

import numpy as np
import torch

from ultragen.data.resumable import mix_seed


def batch_generator(seed: int, batch: int, rank: int) -> torch.Generator:
    """CPU generator of training batch `batch` (counted across epochs) on `rank`: its draws depend on nothing else,
    so a resumed run repeats them without replaying the global RNG stream."""
    return torch.Generator().manual_seed(mix_seed(seed, batch, rank))


def rng_states() -> dict:
    """The global torch (CPU and CUDA), numpy and Python RNG states, in types `torch.load(weights_only=True)` reads."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "python": random.getstate(),
    }


def set_rng_states(states: dict) -> None:
    """Restore what `rng_states` returned (CUDA states only where this process has as many devices)."""
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(states["python"])
