"""Reading run configs without building a run, through `ultragen fit`'s own LightningCLI parser.

`ultragen cost`, `ultragen memory`, the benchmarks and the pattern plots read `-c` files exactly as `fit` stacks them
(class_path replacement, init_args merging, defaults of every signature, type validation); only the parts a tool
does not need (codec, text encoder, data) may be missing. Nothing is instantiated except what a tool asks for, and
networks are built on the meta device unless a device is given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from jsonargparse import ArgumentParser, Namespace

from ultragen.lit.cli import UltraGenCLI
from ultragen.models.attention import AttentionBackend, AttentionStrategy, FullAttention
from ultragen.models.attention.base import resolve_layers
from ultragen.models.wan import StrategyFactory, WanDiT


class ConfigReader(UltraGenCLI):
    """Parses `-c` files like `ultragen fit`, validating types but not requiring keys a tool does not read."""

    def parse_arguments(self, parser, args) -> None:
        self.config = parser.parse_args(args, _skip_validation=True)
        net = self.config.get("model.net")
        if net is None or net.init_args.get("dim") is None:
            raise ValueError(
                "the configs define no model.net widths; add a model preset, e.g. -c configs/model/<preset>.yaml"
            )
        parser.validate(self.config, skip_required=True)

    def _set_seed(self) -> None:
        """Reading a config leaves the global RNG alone (`fit` seeds it from `seed_everything`)."""

    def instantiate_classes(self) -> None:
        pass


def read_config(paths: Sequence[str | Path]) -> Namespace:
    """The config of `-c` files stacked in order (a missing file raises naming it)."""
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"config {path} not found")
    return ConfigReader(args=[a for p in paths for a in ("-c", str(p))], run=False).config


def instantiate(value: Namespace, kind: type) -> Callable:
    """The callable a `class_path`/`init_args` entry of type `kind` (e.g. `StrategyFactory`) becomes in `fit`."""
    parser = ArgumentParser()
    parser.add_argument("--value", type=kind)
    return parser.instantiate(parser.parse_object({"value": value.as_dict()})).value


def build_network(
    config: Namespace, in_dim: int, text_dim: int, device: torch.device | str = "meta"
) -> WanDiT:
    """The configured DiT with `in_dim` latent channels and `text_dim` text width (the codec's and the text
    encoder's in `fit`), on `device` (meta: no memory at any size)."""
    factory = instantiate(config.model.net, Callable[[int, int], WanDiT])
    with torch.device(device):
        return factory(in_dim, text_dim)


def layer_strategies(
    config: Namespace, dim: int | None = None, num_heads: int | None = None, device: torch.device | str = "meta"
) -> list[AttentionStrategy]:
    """Every layer's self-attention strategy as the configured `WanDiT` builds them, optionally at another width (the
    strategies alone, so a benchmark can build them on the CPU at a small width)."""
    args = config.model.net.init_args
    dim, num_heads = dim or args.dim, num_heads or args.num_heads
    attention = instantiate(args.attention, StrategyFactory) if args.get("attention") else FullAttention
    full = set(resolve_layers("full_attention_layers", args.get("full_attention_layers") or [], args.num_layers))
    backend = AttentionBackend(args.attention_backend)
    with torch.device(device):
        return [
            (FullAttention if i in full else attention)(dim, num_heads, i, args.freq_dim, backend)
            for i in range(args.num_layers)
        ]
