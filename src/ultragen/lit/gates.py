"""Log the time-aware gates of attention strategies (e.g. UltraGen's α(t)) to TensorBoard at validation."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

from ultragen.models.wan import sinusoidal_embedding

log = logging.getLogger(__name__)


@contextlib.contextmanager
def full_parameters(net: torch.nn.Module) -> Iterator[None]:
    """Gather DeepSpeed ZeRO-3 partitioned parameters for use outside forward (collective; all ranks enter)."""
    params = [p for p in net.parameters() if hasattr(p, "ds_id")]
    if not params:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params):
        yield


class GateLogger(L.Callback):
    """At each validation, evaluate every strategy exposing `gate_values(timestep_freq)` on a timestep sweep.

    Logs `gates/layer_{i}/{branch}` (branch weight averaged over channels and the sweep) against the global
    step, and writes the sweep itself as `gates_vs_t/layer_{i}/{branch}` with t on the x-axis into a
    TensorBoard run `<log_dir>/gates/step_{global_step}`, so sweeps of successive validations overlay.
    The LightningModule must expose its network as `net` with a `freq_dim` attribute (WanDiT does).
    """

    def __init__(self, timesteps: Sequence[float] = tuple(range(0, 1001, 100)), sweep: bool = True):
        super().__init__()
        if not timesteps or min(timesteps) < 0 or max(timesteps) > 1000:
            raise ValueError(f"timesteps={list(timesteps)} must be a non-empty list of values in [0, 1000]")
        self.timesteps = [float(t) for t in timesteps]
        self.sweep = sweep
        self._warned = False

    @torch.no_grad()
    def gate_values(self, net: torch.nn.Module) -> dict[int, dict[str, Tensor]]:
        """Layer index -> branch name -> (len(timesteps),) channel-mean weights, for every gated strategy."""
        device = next(net.parameters()).device
        t = torch.tensor(self.timesteps, device=device)
        freq = sinusoidal_embedding(net.freq_dim, t).float()  # (S, freq_dim)
        with full_parameters(net):
            return {
                module.layer_idx: {k: v.cpu() for k, v in module.gate_values(freq).items()}
                for module in net.modules()
                if callable(getattr(module, "gate_values", None)) and hasattr(module, "layer_idx")
            }

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        values = self.gate_values(pl_module.net)
        for layer, branches in values.items():
            for branch, v in branches.items():
                pl_module.log(f"gates/layer_{layer}/{branch}", v.mean().item(), on_epoch=True, sync_dist=True)
        if self.sweep and values and trainer.is_global_zero:
            self.write_sweep(trainer, values)

    def write_sweep(self, trainer: L.Trainer, values: dict[int, dict[str, Tensor]]) -> None:
        """Sweep scalars (x-axis: timestep) into a per-validation TensorBoard run."""
        tb = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        if tb is None:
            if not self._warned:
                log.warning("GateLogger: no TensorBoardLogger configured; gate sweeps over t are not written")
                self._warned = True
            return
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(Path(tb.log_dir) / "gates" / f"step_{trainer.global_step}"))
        for layer, branches in values.items():
            for branch, v in branches.items():
                for t, value in zip(self.timesteps, v.tolist()):
                    writer.add_scalar(f"gates_vs_t/layer_{layer}/{branch}", value, global_step=round(t))
        writer.close()
