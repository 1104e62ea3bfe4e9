"""UltraGenAttention: local cross-window, compressed global and hierarchical branches fused by timestep gates."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from ultragen.models.attention.base import (
    AttentionBackend,
    AttentionContext,
    AttentionCost,
    AttentionStrategy,
    VideoGrid,
)
from ultragen.models.attention.global_compressed import GlobalCompressedAttention
from ultragen.models.attention.hierarchical import HierarchicalAttention
from ultragen.models.attention.options import CompressionOptions, LoRAOptions, Padding, WindowOptions, check_choice
from ultragen.models.attention.window import LocalWindowAttention
from ultragen.models.init import init_leaf, zero_linear

GateWeights = Literal["global", "local"]


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
    Branch options are the standalone strategies' (`ultragen.models.attention.options`): `local_windows` and
    `hier_windows` (`WindowOptions`), `hier_compression` and `global_compression` (`CompressionOptions`, factors 2
    and 4 by default), one `lora` for both compressed branches and one `padding` for all three.
    The paper's ablations: `use_global`, `use_hierarchical` (and `use_local`) drop a branch, `lora: {rank: 0}` drops
    the LoRA, `local_windows: {shifts: [false, true]}` makes the local branch Swin-shifted.
    Release compatibility (default off): `global_compression: {key_proj: q}`, `lora: {bias: true, init_b: kaiming}`,
    window `rope: window`, `padding: {policy: interpolate}`, compression `up_init: box`, `gate_weights: local`.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        layer_idx: int,
        freq_dim: int = 256,
        backend: AttentionBackend | str = "sdpa",
        *,
        local_windows: WindowOptions | None = None,
        hier_windows: WindowOptions | None = None,
        hier_compression: CompressionOptions | None = None,
        global_compression: CompressionOptions | None = None,
        lora: LoRAOptions | None = None,
        padding: Padding | None = None,
        use_local: bool = True,
        use_global: bool = True,
        use_hierarchical: bool = True,
        gate_weights: GateWeights = "global",
    ):
        super().__init__(dim, num_heads, layer_idx, freq_dim, backend)
        if not (use_local or use_global or use_hierarchical):
            raise ValueError("use_local, use_global and use_hierarchical are all false; keep at least one branch")
        self.gate_weights = check_choice("gate_weights", gate_weights, ("global", "local"))
        common = dict(dim=dim, num_heads=num_heads, layer_idx=layer_idx, freq_dim=freq_dim, backend=self.backend,
                      padding=padding)
        self.local_branch = (
            LocalWindowAttention(**common, windows=local_windows)
            if use_local
            else None
        )
        self.hier_branch = (
            HierarchicalAttention(**common, compression=hier_compression, windows=hier_windows, lora=lora)
            if use_hierarchical
            else None
        )
        self.global_branch = (
            GlobalCompressedAttention(**common, compression=global_compression, lora=lora) if use_global else None
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

    def fuse(
        self,
        ctx: AttentionContext,
        dtype: torch.dtype,
        local: Callable[[LocalWindowAttention], Tensor],
        compressed: Callable[[GlobalCompressedAttention, Tensor], Tensor],
    ) -> Tensor:
        """Σ over the branches of weight · output (Eq. 3): `local(branch)` is weighted here; `compressed(branch,
        weight)` applies its (B, C) weight itself, on its small plane (weights are constant over tokens)."""
        weights = {k: v.to(dtype).squeeze(1) for k, v in self.branch_weights(ctx.timestep_freq).items()}  # (B, C)
        out = None
        for name, branch in self.branches():
            if branch is None:
                continue
            if branch is self.local_branch:
                part = local(branch) * weights[name][:, None]  # (B, N, C)
            else:
                part = compressed(branch, weights[name])
            out = part if out is None else out.add_(part)
        return out

    def forward(self, attn, x: Tensor, ctx: AttentionContext) -> Tensor:
        def compressed(branch: GlobalCompressedAttention, weight: Tensor) -> Tensor:
            plane, plan = branch.attend(attn, x, ctx)  # (B, T, h', w', C)
            return plan.decompress(plane, branch.up, weight)

        return self.fuse(ctx, x.dtype, lambda branch: branch(attn, x, ctx), compressed)

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
        return f"branches={branches}, gate_weights={self.gate_weights}, {super().extra_repr()}"
