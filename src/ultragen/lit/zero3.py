"""DeepSpeed ZeRO-3 pieces of building the DiT where sharding sees it (`VideoDiffusionModule.configure_model`).

Lightning's `DeepSpeedStrategy` calls `configure_model` inside `deepspeed.zero.Init`, which partitions every module's
parameters over the ranks at the end of the module's own `__init__`: no rank ever holds the whole network. The model
code initialises child modules through `ultragen.models.init.init_leaf` (`Module.apply`, which `zero.Init` wraps to
gather, initialise on every rank and keep rank 0's values), so the partitioned build equals a plain seeded build.
What else touches the weights while they are partitioned lives here.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from ultragen.checkpoints import Format, LoadReport, plan_load, read_dit_state

log = logging.getLogger(__name__)


def is_partitioned(module: nn.Module) -> bool:
    """Whether ZeRO-3 partitioned some of `module`'s parameters (built under `deepspeed.zero.Init`)."""
    return any(hasattr(p, "ds_id") for p in module.parameters())


def partition_summary(net: nn.Module) -> str:
    """'rank r holds P of the N partitioned parameter elements (+ W whole)': what this rank keeps of a network built
    under `zero.Init`; W counts parameters built outside it (LoRA adapters), which DeepSpeed partitions later."""
    import torch.distributed as dist

    partitioned = [p for p in net.parameters() if hasattr(p, "ds_id")]
    whole = sum(p.numel() for p in net.parameters() if not hasattr(p, "ds_id"))
    return (f"rank {dist.get_rank()} holds {sum(p.ds_tensor.numel() for p in partitioned)} of the "
            f"{sum(p.ds_numel for p in partitioned)} partitioned DiT parameter elements (+ {whole} whole)")


@contextlib.contextmanager
def outside_zero_init() -> Iterator[None]:
    """Suspends an active `deepspeed.zero.Init`, as `deepspeed.initialize` does: modules built here keep whole
    tensors, and the DeepSpeed engine partitions them (broadcasting rank 0's values) when it starts.

    For peft's LoRA adapters, which initialise their factors directly after building them (partitioned factors
    would be empty placeholders); they are small next to the network they adapt.
    """
    from deepspeed.runtime.zero.partition_parameters import restore_init_context, shutdown_init_context

    shutdown_init_context()
    try:
        yield
    finally:
        restore_init_context()


def load_partitioned(net: nn.Module, path: str | Path, format: Format = "auto", strict: bool = True) -> LoadReport:
    """`ultragen.checkpoints.load_dit_weights` into a ZeRO-3 partitioned network.

    Global rank 0 alone reads the file and plans the load (the same report, the same strictness); the plan reaches
    every rank, so a refused load raises everywhere. Then module by module, in the same order on every rank, the
    module's own parameters are gathered, rank 0 copies the file's tensors into them, and its values are
    broadcast and partitioned again: at most one module is whole at a time, and the other ranks never hold the
    file's tensors.
    """
    import deepspeed
    import torch.distributed as dist

    rank = dist.get_rank()
    params = dict(net.named_parameters(remove_duplicate=False))
    if any(dist.get_world_size(p.ds_process_group) != dist.get_world_size() for p in params.values()
           if hasattr(p, "ds_id")):
        raise NotImplementedError(
            "net_weights under ZeRO-3 are read on rank 0 and broadcast over all ranks; parameters partitioned over "
            "sub-groups (MiCS, hpZ) are not supported: load the weights without them"
        )
    shapes = {k: tuple(params[k].ds_shape) if k in params else tuple(v.shape) for k, v in net.state_dict().items()}
    outcome: list = [None]
    usable: dict[str, torch.Tensor] = {}
    if rank == 0:
        try:
            state, fmt = read_dit_state(path, format)
            report, usable = plan_load(shapes, state, path=str(path), format=fmt, strict=strict)
            outcome[0] = report
        except Exception as exn:  # every rank raises, rather than waiting for rank 0 at the next collective
            outcome[0] = exn
    dist.broadcast_object_list(outcome, src=0)
    if isinstance(outcome[0], Exception):
        raise outcome[0]
    report: LoadReport = outcome[0]
    loaded = set(report.loaded)
    with torch.no_grad():
        for prefix, module in net.named_modules():
            own = [(f"{prefix}.{n}" if prefix else n, p) for n, p in module.named_parameters(recurse=False)]
            own = [(k, p) for k, p in own if k in loaded]
            if own:
                with deepspeed.zero.GatheredParameters([p for _, p in own], modifier_rank=0):
                    if rank == 0:
                        for key, p in own:
                            p.copy_(usable[key])
            for name, buffer in module.named_buffers(recurse=False):  # ZeRO-3 leaves buffers whole on every rank
                key = f"{prefix}.{name}" if prefix else name
                if key in loaded:
                    if rank == 0:
                        buffer.copy_(usable[key])
                    dist.broadcast(buffer, src=0)
    if rank == 0:
        report.log()
    return report
