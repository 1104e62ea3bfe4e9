"""Training strategies that Lightning does not ship: DeepSpeed ZeRO on CPU (gloo) for tests and debugging."""

from __future__ import annotations

import torch
from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy


class CPUDeepSpeedStrategy(DeepSpeedStrategy):
    """Lightning's DeepSpeedStrategy without its CUDA-only checks; same ZeRO code path, gloo backend.

    Use `strategy: deepspeed_stage_2` (or 3, `_offload`) on GPUs; this class exists so ZeRO sharding,
    checkpoint directories and their fp32 export are exercised on CPU machines and in CI.
    """

    strategy_name = "deepspeed_cpu"

    def setup_environment(self) -> None:
        DDPStrategy.setup_environment(self)

    def setup_distributed(self) -> None:
        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    @property
    def root_device(self) -> torch.device:
        return torch.device("cpu", self.local_rank)  # DeepSpeed needs an indexed device
