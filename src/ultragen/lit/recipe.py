"""What a training run changes on the DiT, shared by `VideoDiffusionModule` and `ultragen memory` (which must not
import Lightning): the trainable selection, the activation-checkpointing schedule and FSDP2 sharding. Kept out of
`models/`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ultragen.models.blocks import DiTBlock

TRAINABLE = ("all", "strategy", "lora")
DEFAULT_LORA_RANK = 64
# Wan's attention projections and FFN, named from the block so that peft's suffix match skips the strategies' own
# `...strategy.*_branch.lora.q` projections (peft cannot wrap those; bare "q" would select them too).
DEFAULT_LORA_TARGETS = tuple(f"{attn}.{p}" for attn in ("self_attn", "cross_attn") for p in "qkvo") + ("ffn.0", "ffn.2")


def select_trainable(
    net: nn.Module,
    trainable: str,
    rank: int = DEFAULT_LORA_RANK,
    alpha: float | None = None,
    targets: Sequence[str] = DEFAULT_LORA_TARGETS,
) -> nn.Module:
    """all: every DiT weight; strategy: only `*.strategy.*`; lora: peft LoRA adapters on `targets`, only `lora_*`
    trainable. Returns the network (peft injects the adapters in place)."""
    if trainable not in TRAINABLE:
        raise ValueError(f"model.trainable={trainable!r} is not supported; choose one of {list(TRAINABLE)}")
    if trainable == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        net = inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=list(targets)), net)
    marker = {"all": "", "strategy": ".strategy.", "lora": "lora_"}[trainable]
    for name, p in net.named_parameters():
        p.requires_grad_(marker in name)
    return net


def checkpoint_interval(setting: str | int) -> int:
    """`activation_checkpointing` as a block interval: "none" -> 0, "blocks" -> 1 (every block), n -> every n-th."""
    if setting in ("none", "blocks"):
        return int(setting == "blocks")
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
        raise ValueError(
            f"activation_checkpointing={setting!r} is not supported; use 'none', 'blocks' or a block interval n >= 1"
        )
    return setting


def checkpoint_blocks(net: nn.Module, every_n: int) -> list[int]:
    """Recompute the activations of every `every_n`-th DiT block (0, n, 2n, ...) in backward; returns their indices.

    Non-reentrant `torch.utils.checkpoint` replaces each chosen block's `forward` on the instance instead of wrapping
    the block in a new module: parameter names stay Wan's, and DeepSpeed ZeRO-3, which hooks every submodule,
    sees no wrapper (torch's `CheckpointWrapper` fails under ZeRO-3 with "'CheckpointWrapper' object has no
    attribute '_ds_child_entered'").
    """
    blocks = [m for m in net.modules() if isinstance(m, DiTBlock)]
    chosen = list(range(0, len(blocks), every_n))
    for i in chosen:
        blocks[i].forward = partial(checkpoint, blocks[i].forward, use_reentrant=False)
    return chosen


def shard_blocks(net: nn.Module, mesh) -> int:
    """FSDP2: `fully_shard` every DiT block over the 1-D device `mesh`, then the network (embeddings and head).

    Blocks are sharded after `checkpoint_blocks` and peft, as torchtitan orders it; FSDP2 accepts blocks that mix
    frozen and trainable parameters (`strategy` and `lora` runs). Returns the number of blocks sharded.
    """
    from torch.distributed.fsdp import fully_shard

    blocks = [m for m in net.modules() if isinstance(m, DiTBlock)]
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(net, mesh=mesh)
    return len(blocks)


def run_with_rank0_errors(build: Callable[[], None]) -> None:
    """`build()` on every rank; an exception on rank 0 (where the files are read) is raised on every rank, rather than
    leaving the others waiting for it at the next collective."""
    import torch.distributed as dist

    error = None
    try:
        build()
    except Exception as exn:
        error = exn
    outcome = [error if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(outcome, src=0)
    if error is not None:
        raise error
    if outcome[0] is not None:
        raise RuntimeError(f"rank 0 failed to build the DiT: {outcome[0]}") from outcome[0]


def fill_from_rank0(net: nn.Module, full_state: dict[str, Tensor] | None) -> None:
    """After `shard_blocks` of a network that rank 0 built whole (`full_state`: its state dict before sharding) and
    the other ranks on the meta device (None): those allocate their shards, and rank 0's tensors are broadcast into
    every rank's shards one by one, so only rank 0 ever holds the whole network."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    if full_state is None:
        net.to_empty(device="cpu")
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(net, full_state or {}, options=options)
    for buffer in net.buffers():  # not sharded; non-persistent ones are not in the state dict
        dist.broadcast(buffer, src=0)
