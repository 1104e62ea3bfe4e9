"""UltraGenAttention: local cross-window, compressed global and hierarchical branches fused by timestep gates."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from ultragen.models.attention.base import AttentionBackend, AttentionContext, AttentionCost, AttentionStrategy, VideoGrid
from ultragen.models.attention.global_compressed import (
    CompressedRope,
    GlobalCompressedAttention,
    KeyProjection,
    UpInit,
)
from ultragen.models.attention.hierarchical import HierarchicalAttention
from ultragen.models.attention.window import (
    LocalWindowAttention,
    PadPolicy,
    SwinAttention,
    WindowRope,
    check_choice,
)
from ultragen.models.init import init_leaf
from ultragen.models.lora import LoRAInit

GateWeights = Literal["global", "local"]
LocalKind = Literal["window", "swin"]


def zero_linear(m: nn.Linear) -> None:
    nn.init.zeros_(m.weight)
    nn.init.zeros_(m.bias)


class TimeGate(nn.Module):
    """α(t) = Sigmoid(projection(embedding(sin(t)))) per channel; the last Linear starts at zero, so α = 0.5.

    Layout as released: `embedding` = Linear, SiLU, Linear; `projection` = SiLU, Linear, Sigmoid.
    """

    def __init__(self, freq_dim: int, dim: int):
        super().__init__()
        self.freq_dim = freq_dim
        self.embedding = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim), nn.Sigmoid())
        init_leaf(self.projection[1], zero_linear)

    def forward(self, timestep_freq: Tensor) -> Tensor:
        """(B, freq_dim) sinusoidal timestep features -> (B, 1, C) gate values in (0, 1)."""
        if timestep_freq.shape[-1] != self.freq_dim:
            raise ValueError(
                f"timestep features have {timestep_freq.shape[-1]} dims but the gate expects freq_dim={self.freq_dim}; "
                "the network supplies its freq_dim to the strategies; build the strategy with the network's freq_dim"
            )
        weight = self.embedding[0].weight
        return self.projection(self.embedding(timestep_freq.to(weight.dtype))).unsqueeze(1)


class UltraGenAttention(AttentionStrategy):
    """Hierarchical global-local attention (UltraGen, METHOD.md §2): three branches, two time-aware gates.

    z_l = mix(local, hierarchical; gate_local), z = mix(z_l, global; gate_global). With
    `gate_weights="global"` (paper) each sigmoid weights the coarser branch (α·z_g + (1−α)·z_l);
    with `"local"` (release) it weights the finer one; the two differ by negating the last Linear.
    `use_global`, `use_hierarchical`, `use_lora` and `local="swin"` are the paper's ablations (`use_local` too).
    Release-compatibility flags (default off): `global_key_proj="q"`, `lora_bias`, `lora_init_b="kaiming"`,
    `window_rope="window"`, `pad="interpolate"`, `up_init="box"`, `gate_weights="local"`.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        layer_idx: int,
        freq_dim: int = 256,
        backend: AttentionBackend | str = "sdpa",
        *,
        local_windows: Sequence[Sequence[int]] = ((4, 4), (5, 5)),
        local: LocalKind = "window",
        swin_shifts: Sequence[bool] = (False, True),
        global_factor: int = 4,
        hier_factor: int = 2,
        hier_windows: Sequence[Sequence[int]] = ((2, 2), (3, 3)),
        use_local: bool = True,
        use_global: bool = True,
        use_hierarchical: bool = True,
        use_lora: bool = True,
        lora_rank: int = 64,
        lora_targets: Sequence[str] = ("q", "k", "v"),
        lora_alpha: float | None = None,
        lora_bias: bool = False,
        lora_init_b: LoRAInit = "zero",
        global_key_proj: KeyProjection = "k",
        window_rope: WindowRope = "global",
        compressed_rope: CompressedRope = "grid",
        pad: PadPolicy = "error",
        antialias: bool = False,
        up_init: UpInit = "identity",
        gate_weights: GateWeights = "global",
    ):
        super().__init__(dim, num_heads, layer_idx, freq_dim, backend)
        if not (use_local or use_global or use_hierarchical):
            raise ValueError("use_local, use_global and use_hierarchical are all false; keep at least one branch")
        self.local = check_choice("local", local, ("window", "swin"))
        self.gate_weights = check_choice("gate_weights", gate_weights, ("global", "local"))
        self.use_lora = use_lora
        common = dict(dim=dim, num_heads=num_heads, layer_idx=layer_idx, freq_dim=freq_dim, backend=self.backend)
        windows = dict(windows=local_windows, rope=window_rope, pad=pad, antialias=antialias, **common)
        local_cls = SwinAttention if local == "swin" else LocalWindowAttention
        extra = {"shifts": swin_shifts} if local == "swin" else {}
        self.local_branch = local_cls(**windows, **extra) if use_local else None
        branch = dict(
            lora_rank=lora_rank if use_lora else 0, lora_targets=lora_targets, lora_alpha=lora_alpha,
            lora_bias=lora_bias, lora_init_b=lora_init_b, rope=compressed_rope, pad=pad, up_init=up_init, **common,
        )
        self.hier_branch = (
            HierarchicalAttention(factor=hier_factor, windows=hier_windows, window_rope=window_rope,
                                  antialias=antialias, **branch)
            if use_hierarchical
            else None
        )
        self.global_branch = (
            GlobalCompressedAttention(factor=global_factor, key_proj=global_key_proj, **branch) if use_global else None
        )
        # gate_local mixes local and hierarchical, gate_global that mix and global: each only if both sides exist
        self.gate_local = TimeGate(freq_dim, dim) if use_local and use_hierarchical else None
        self.gate_global = TimeGate(freq_dim, dim) if use_global and (use_local or use_hierarchical) else None

    def coarse_weight(self, gate: TimeGate, timestep_freq: Tensor) -> Tensor:
        """(B, 1, C) weight of the coarser branch of `gate`: α under `global` orientation, 1 − α under `local`."""
        alpha = gate(timestep_freq)
        return alpha if self.gate_weights == "global" else 1 - alpha

    def branch_weights(self, timestep_freq: Tensor) -> dict[str, Tensor]:
        """Per-channel weight (B, 1, C) of each branch in the fused output (they sum to one).

        global = w_g, hierarchical = (1 − w_g)·w_h, local = (1 − w_g)·(1 − w_h): the gates nested as in Eq. 3.
        """
        weights, rest = {}, timestep_freq.new_ones(timestep_freq.shape[0], 1, 1)
        for name, gate in (("global", self.gate_global), ("hierarchical", self.gate_local)):
            if gate is not None:
                w = self.coarse_weight(gate, timestep_freq)
                weights[name], rest = rest * w, rest * (1 - w)
        finest = next(n for n, b in self.branches() if b is not None)
        weights[finest] = rest
        return weights

    def branches(self) -> tuple[tuple[str, AttentionStrategy | None], ...]:
        """(name, branch or None), finest first."""
        return (("local", self.local_branch), ("hierarchical", self.hier_branch), ("global", self.global_branch))

    def forward(self, attn, x: Tensor, ctx: AttentionContext) -> Tensor:
        weights = {k: v.to(x.dtype).squeeze(1) for k, v in self.branch_weights(ctx.timestep_freq).items()}  # (B, C)
        out = None
        for name, branch in self.branches():
            if branch is None:
                continue
            if branch is self.local_branch:
                part = branch(attn, x, ctx) * weights[name][:, None]  # (B, N, C)
            else:  # weights are constant over tokens: the coarse branches apply theirs on their small planes
                plane, plan = branch.attend(attn, x, ctx)  # (B, T, h', w', C)
                part = plan.decompress(plane, branch.up, weights[name])
            out = part if out is None else out.add_(part)
        return out

    def cost(self, grid: VideoGrid) -> AttentionCost:
        """The branches' costs (the gates are per clip, not per token: negligible)."""
        return sum((b.cost(grid) for _, b in self.branches() if b is not None), AttentionCost())

    def describe(self) -> str:
        parts = []
        if self.local_branch is not None:
            parts.append(f"L{'x'.join(map(str, self.local_branch.window_grid))}")
        if self.hier_branch is not None:
            parts.append(f"H{'x'.join(map(str, self.hier_branch.window_grid))}/{self.hier_branch.factor}")
        if self.global_branch is not None:
            parts.append(f"G/{self.global_branch.factor}")
        return f"{type(self).__name__}[{' '.join(parts)}]"

    @torch.no_grad()
    def gate_values(self, timestep_freq: Tensor) -> dict[str, Tensor]:
        """Effective weight of each branch in the fused output, mean over channels: name -> (B,)."""
        return {k: v.float().mean((1, 2)) for k, v in self.branch_weights(timestep_freq).items()}

    def extra_repr(self) -> str:
        branches = [name for name, branch in self.branches() if branch is not None]
        return f"branches={branches}, lora={self.use_lora}, gate_weights={self.gate_weights}, {super().extra_repr()}"
