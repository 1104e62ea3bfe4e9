"""Load DiT weights from Wan2.1, diffusers, UltraGen-release or Lightning files, with one clear report.

Files are read without unpickling code: safetensors (single or sharded with an index json), or
`.pt/.pth/.ckpt/.bin` through `torch.load(weights_only=True)` only. Each layout has a key converter
in `KEY_CONVERTERS` that renames a raw state dict to `WanDiT` parameter names.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

StateDict = dict[str, Tensor]
KeyConverter = Callable[[StateDict], StateDict]
Format = Literal["auto", "wan2.1", "diffusers", "ultragen_release", "lightning"]

PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
STRATEGY_KEY = ".self_attn.strategy."


#################################################################################
#                               Reading files                                   #
#################################################################################


def torch_load_safe(path: str | Path) -> object:
    """`torch.load(weights_only=True)`; raises explaining how to convert files that hold pickled objects."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        raise ValueError(
            f"{path} holds pickled Python objects ({', '.join(unsafe[:5])}) that safe loading refuses; "
            "ultragen never unpickles code. If you trust the file, convert it once outside ultragen: open it with "
            "PyTorch's full unpickler (weights_only off) in a session you trust, write its tensors with "
            "safetensors.torch.save_file, and load that .safetensors file"
        ) from err


def resolve_weights_path(path: str | Path) -> Path:
    """A file to read: the file itself, or the one `*.safetensors.index.json` / `*.safetensors` in a directory."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist; give a .safetensors file, an index json or a dir")
    if path.is_file():
        return path
    for pattern in ("*.safetensors.index.json", "*.safetensors"):
        found = sorted(path.glob(pattern))
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise ValueError(f"{path} holds several {pattern} files ({[f.name for f in found]}); name one of them")
    raise FileNotFoundError(
        f"{path} holds no *.safetensors or *.safetensors.index.json file; for a DeepSpeed checkpoint directory "
        "run `ultragen export DIR --out dit.safetensors` first"
    )


def read_state_dict(path: str | Path) -> dict:
    """Raw contents of a weights file: a flat tensor dict (safetensors) or whatever safe `torch.load` returns."""
    from safetensors.torch import load_file

    path = resolve_weights_path(path)
    if path.name.endswith(".index.json"):
        weight_map: dict[str, str] = json.loads(path.read_text())["weight_map"]
        state: StateDict = {}
        for shard in sorted(set(weight_map.values())):
            state.update(load_file(path.parent / shard))
        absent = sorted(set(weight_map) - set(state))
        if absent:
            raise ValueError(f"{path} lists {len(absent)} tensors its shards lack, e.g. {absent[:3]}")
        return state
    if path.suffix == ".safetensors":
        return load_file(path)
    if path.suffix in PICKLE_SUFFIXES:
        return torch_load_safe(path)
    raise ValueError(
        f"unknown weights file type {path.name!r}; use .safetensors, a .safetensors.index.json or .pt/.ckpt"
    )


#################################################################################
#                               Key converters                                  #
#################################################################################


def strip_prefix(state: StateDict, prefix: str) -> StateDict:
    """Keys starting with `prefix` lose it; other keys stay as they are."""
    return {k.removeprefix(prefix): v for k, v in state.items()}


def convert_wan21(state: StateDict) -> StateDict:
    """Official Wan2.1 names are WanDiT's; only a ComfyUI-style `model.diffusion_model.` prefix is dropped."""
    return strip_prefix(state, "model.diffusion_model.")


# diffusers `WanTransformer3DModel` -> Wan2.1, the inverse of diffusers' `convert_wan_transformer_to_diffusers`.
# Ordered: block-level patterns first; diffusers' norm2 (affine, before cross-attn) is Wan's norm3.
DIFFUSERS_TO_WAN: list[tuple[str, str]] = [
    (r"^condition_embedder\.time_embedder\.linear_1\.", "time_embedding.0."),
    (r"^condition_embedder\.time_embedder\.linear_2\.", "time_embedding.2."),
    (r"^condition_embedder\.time_proj\.", "time_projection.1."),
    (r"^condition_embedder\.text_embedder\.linear_1\.", "text_embedding.0."),
    (r"^condition_embedder\.text_embedder\.linear_2\.", "text_embedding.2."),
    (r"^(blocks\.\d+)\.attn1\.", r"\1.self_attn."),
    (r"^(blocks\.\d+)\.attn2\.", r"\1.cross_attn."),
    (r"\.to_([qkv])\.", r".\1."),
    (r"\.to_out\.0\.", ".o."),
    (r"^(blocks\.\d+)\.norm2\.", r"\1.norm3."),
    (r"^(blocks\.\d+)\.ffn\.net\.0\.proj\.", r"\1.ffn.0."),
    (r"^(blocks\.\d+)\.ffn\.net\.2\.", r"\1.ffn.2."),
    (r"^(blocks\.\d+)\.scale_shift_table$", r"\1.modulation"),
    (r"^scale_shift_table$", "head.modulation"),
    (r"^proj_out\.", "head.head."),
]


def convert_diffusers(state: StateDict) -> StateDict:
    """diffusers `WanTransformer3DModel` state dict -> Wan2.1 / WanDiT names."""
    out = {}
    for key, value in state.items():
        for pattern, repl in DIFFUSERS_TO_WAN:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def convert_lightning(checkpoint: dict) -> StateDict:
    """The `net.` part of a Lightning checkpoint's `state_dict` (the VideoDiffusionModule's network)."""
    if "state_dict" not in checkpoint:
        raise ValueError(
            "not a Lightning checkpoint (no 'state_dict' entry); use format='wan2.1' for a plain state dict"
        )
    state = checkpoint["state_dict"]
    return {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}


KEY_CONVERTERS: dict[str, KeyConverter] = {
    "wan2.1": convert_wan21,
    "diffusers": convert_diffusers,
    "lightning": convert_lightning,
}
# "ultragen_release" registers itself in the "UltraGen release key map" section at the end of this file.


def detect_format(raw: dict) -> str:
    """Guess the layout of a raw state dict from characteristic keys."""
    if "state_dict" in raw and isinstance(raw["state_dict"], dict):
        return "lightning"
    keys = list(raw)
    if any(k.startswith("condition_embedder.") or ".attn1." in k for k in keys):
        return "diffusers"
    if any(re.search(r"\.self_attn\.(q_lora_1|alpha_time_embedding|downsample_conv)", k) for k in keys):
        return "ultragen_release"
    return "wan2.1"


#################################################################################
#                             Loading and reporting                             #
#################################################################################


def group_keys(keys: list[str]) -> list[str]:
    """Collapse per-block keys: 'blocks.{0-29}.self_attn.q.weight (30)'."""
    groups: dict[str, list[int]] = {}
    for key in keys:
        m = re.match(r"blocks\.(\d+)\.(.*)", key)
        name, idx = (f"blocks.{{}}.{m.group(2)}", int(m.group(1))) if m else (key, -1)
        groups.setdefault(name, []).append(idx)
    lines = []
    for name, ids in groups.items():
        if ids == [-1]:
            lines.append(name)
            continue
        ids = sorted(ids)
        contiguous = ids[-1] - ids[0] + 1 == len(ids)
        span = f"{ids[0]}-{ids[-1]}" if contiguous and len(ids) > 1 else ",".join(map(str, ids))
        lines.append(f"{name.format('{' + span + '}')} ({len(ids)})")
    return lines


@dataclass
class LoadReport:
    """What a load did: tensors loaded, fresh strategy parameters, and everything that did not fit."""

    path: str
    format: str
    loaded: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)  # strategy parameters absent from a plain Wan2.1 file
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)  # key, file, model

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def log(self) -> None:
        (log.info if self.ok else log.warning)("%s", self)

    def __str__(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors from {self.path} (format {self.format})"]
        sections = [
            ("new strategy parameters, initialised fresh", self.fresh),
            ("MISSING from the file (left at their initial values)", self.missing),
            ("UNEXPECTED in the file (ignored)", self.unexpected),
        ]
        for title, keys in sections:
            if keys:
                lines.append(f"  {title}: {len(keys)}")
                lines.extend(f"    {g}" for g in group_keys(keys))
        if self.mismatched:
            lines.append(f"  SHAPE MISMATCH (not loaded): {len(self.mismatched)}")
            lines.extend(f"    {k}: file {tuple(a)} vs model {tuple(b)}" for k, a, b in self.mismatched)
        return "\n".join(lines)


def plan_load(
    shapes: dict[str, tuple[int, ...]], state: StateDict, path: str = "<memory>", format: str = "wan2.1",
    strict: bool = True,
) -> tuple[LoadReport, StateDict]:
    """The report of loading a WanDiT-named state dict into a network whose state keys have `shapes`, and the
    tensors that fit; raises if strict and partial.

    Missing `*.self_attn.strategy.*` keys are allowed (reported as fresh) when the file has no strategy keys at
    all, i.e. a plain Wan2.1 checkpoint loaded into a model with a new attention strategy.
    """
    report = LoadReport(path=str(path), format=format)
    plain = not any(STRATEGY_KEY in k for k in state)
    usable: StateDict = {}
    for key, value in state.items():
        if key not in shapes:
            report.unexpected.append(key)
        elif tuple(value.shape) != tuple(shapes[key]):
            report.mismatched.append((key, tuple(value.shape), tuple(shapes[key])))
        else:
            usable[key] = value
    for key in shapes:
        if key not in state:
            (report.fresh if plain and STRATEGY_KEY in key else report.missing).append(key)
    report.loaded = sorted(usable)
    if strict and not report.ok:
        raise ValueError(
            f"{report}\nrefusing a partial load: fix the file or the model config, or load non-strictly "
            "(`model.net_weights_strict: false` for the DiT)"
        )
    return report, usable


def load_state_dict_into(
    net: nn.Module, state: StateDict, path: str = "<memory>", format: str = "wan2.1", strict: bool = True
) -> LoadReport:
    """Copy matching tensors of a WanDiT-named state dict into `net`; report the rest; raise if strict and partial
    (`plan_load`)."""
    own = net.state_dict()
    if any(t.is_meta for t in own.values()):
        raise ValueError("the network is on the meta device; build it on a real device before loading weights")
    report, usable = plan_load({k: tuple(v.shape) for k, v in own.items()}, state, path, format, strict)
    net.load_state_dict(usable, strict=False)
    report.log()
    return report


def read_dit_state(path: str | Path, format: Format = "auto") -> tuple[StateDict, str]:
    """A Wan2.1 / diffusers / UltraGen-release / Lightning checkpoint (file, index json or dir) under `WanDiT`'s
    names, and the format it was read as."""
    raw = read_state_dict(path)
    if not isinstance(raw, dict):
        raise ValueError(f"{path} holds a {type(raw).__name__}, not a state dict")
    fmt = detect_format(raw) if format == "auto" else format
    if fmt not in KEY_CONVERTERS:
        raise ValueError(f"unknown checkpoint format {fmt!r}; choose one of {['auto', *KEY_CONVERTERS]}")
    return KEY_CONVERTERS[fmt](raw), fmt


def load_dit_weights(net: nn.Module, path: str | Path, format: Format = "auto", strict: bool = True) -> LoadReport:
    """Load a Wan2.1 / diffusers / UltraGen-release / Lightning checkpoint (file, index json or dir) into `net`."""
    state, fmt = read_dit_state(path, format)
    return load_state_dict_into(net, state, path=str(path), format=fmt, strict=strict)


#################################################################################
#              UltraGen release key map (registers "ultragen_release")           #
#################################################################################

# Released UltraGen names under `blocks.{i}.self_attn.` (METHOD.md §5.2) -> UltraGenAttention's parameter names.
# The release fuses gates with `gate_weights: local`; its LoRAs need `lora_bias: true` (see ultragen_release.yaml).
RELEASE_TO_ULTRAGEN: list[tuple[str, str]] = [
    (r"\.self_attn\.([qkv])_lora_1\.", r".self_attn.strategy.global_branch.lora.\1."),
    (r"\.self_attn\.([qkv])_lora_2\.", r".self_attn.strategy.hier_branch.lora.\1."),
    (r"\.self_attn\.alpha_time_embedding\.", ".self_attn.strategy.gate_global.embedding."),
    (r"\.self_attn\.alpha_time_projection\.", ".self_attn.strategy.gate_global.projection."),
    (r"\.self_attn\.alpha_time_embedding2\.", ".self_attn.strategy.gate_local.embedding."),
    (r"\.self_attn\.alpha_time_projection2\.", ".self_attn.strategy.gate_local.projection."),
    (r"\.self_attn\.downsample_conv\.", ".self_attn.strategy.global_branch.down."),
    (r"\.self_attn\.upsample_conv\.", ".self_attn.strategy.global_branch.up."),
    (r"\.self_attn\.downsample_conv_hierachcal\.", ".self_attn.strategy.hier_branch.down."),
    (r"\.self_attn\.upsample_conv_hierachcal\.", ".self_attn.strategy.hier_branch.up."),
]


def convert_ultragen_release(state: StateDict) -> StateDict:
    """UltraGen release state dict (`q_lora_1`, `alpha_time_embedding`, `downsample_conv`, ...) -> WanDiT names."""
    out = {}
    for key, value in convert_wan21(state).items():
        for pattern, repl in RELEASE_TO_ULTRAGEN:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


KEY_CONVERTERS["ultragen_release"] = convert_ultragen_release
