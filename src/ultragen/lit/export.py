"""`ultragen export`: a Lightning or DeepSpeed ZeRO checkpoint -> one safetensors file of DiT weights (Wan names)."""

from __future__ import annotations

import argparse
import logging
import os
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from ultragen.checkpoints import convert_lightning, read_dit_state, read_state_dict, torch_load_safe

log = logging.getLogger(__name__)


LORA_A = re.compile(r"^(?P<stem>.+)\.lora_A\.(?P<adapter>[^.]+)\.weight$")


def merge_lora(state: dict[str, torch.Tensor], alpha: float | None) -> dict[str, torch.Tensor]:
    """peft LoRA adapters folded into their layers under Wan's names: W = W0 + (alpha / r) B A, with r the rank
    and alpha the run's `lora_alpha` (None: alpha = r, the module's default). A state without adapters is returned
    unchanged."""
    merged = dict(state)
    for key in [k for k in state if LORA_A.match(k)]:
        stem, adapter = LORA_A.match(key).group("stem", "adapter")
        down, up = merged.pop(key), merged.pop(f"{stem}.lora_B.{adapter}.weight")
        base = merged.pop(f"{stem}.base_layer.weight")
        scale = (alpha or down.shape[0]) / down.shape[0]
        merged[f"{stem}.weight"] = base + scale * (up.float() @ down.float()).to(base)
        if f"{stem}.base_layer.bias" in merged:
            merged[f"{stem}.bias"] = merged.pop(f"{stem}.base_layer.bias")
    return merged


def with_base(state: dict[str, torch.Tensor], base: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A checkpoint that holds only the trainable tensors (`exclude_frozen_parameters`) completed from the run's
    base weights: the base, overlaid with the checkpoint, and the frozen layer of each LoRA adapter from the base
    tensor of the same layer."""
    state = dict(state)
    for key in [k for k in state if LORA_A.match(k)]:
        stem = LORA_A.match(key).group("stem")
        for param in ("weight", "bias"):
            if f"{stem}.base_layer.{param}" not in state and f"{stem}.{param}" in base:
                state[f"{stem}.base_layer.{param}"] = base[f"{stem}.{param}"]
    return base | state


def export_dit(
    ckpt: str | Path, out: str | Path, dtype: torch.dtype | None = None, base: str | Path | None = None
) -> Path:
    """Write the DiT weights of a Lightning `.ckpt` or a DeepSpeed checkpoint directory to `out` atomically, with
    LoRA adapters of a `trainable: lora` run merged (`merge_lora`), so the file loads into a plain `WanDiT`.

    A checkpoint saved with `model.exclude_frozen_parameters` holds only the trained tensors; `base` (the run's
    `model.net_weights`, any format `net_weights` reads) supplies the rest."""
    ckpt = Path(ckpt)
    if ckpt.is_dir():
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        if not (ckpt / "latest").is_file():
            raise FileNotFoundError(f"{ckpt} is a directory but not a DeepSpeed checkpoint (no 'latest' file)")
        raw = {"state_dict": get_fp32_state_dict_from_zero_checkpoint(str(ckpt))}
        client = min((ckpt / "checkpoint").glob("*mp_rank_00_model_states.pt"))  # rank 0's; Lightning's state
        raw["hyper_parameters"] = torch_load_safe(client).get("hyper_parameters", {})
    else:
        raw = read_state_dict(ckpt)
    hparams = raw.get("hyper_parameters", {})
    state = convert_lightning(raw)
    if base is not None:
        state = with_base(state, read_dit_state(base)[0])
    elif hparams.get("exclude_frozen_parameters"):
        raise ValueError(
            f"{ckpt} holds only the trained tensors (model.exclude_frozen_parameters); pass the run's base weights "
            "(its model.net_weights) with --base"
        )
    state = merge_lora(state, hparams.get("lora_alpha"))
    if not state:
        raise ValueError(f"{ckpt} holds no 'net.*' weights: is it a VideoDiffusionModule checkpoint?")
    state = {k: (v.to(dtype) if dtype and v.is_floating_point() else v).contiguous() for k, v in state.items()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    save_file(state, str(tmp), metadata={"format": "pt", "source": str(ckpt)})
    os.replace(tmp, out)
    log.info("exported %d tensors (%.1fM parameters) to %s", len(state), sum(v.numel() for v in state.values()) / 1e6, out)
    return out


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="ultragen export", description=__doc__)
    parser.add_argument("ckpt", help="Lightning .ckpt file or DeepSpeed checkpoint directory (e.g. runs/.../last.ckpt)")
    parser.add_argument("--out", required=True, help="output .safetensors path")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None, help="cast floating weights")
    parser.add_argument("--base", default=None, help="the run's model.net_weights, for a checkpoint saved with "
                        "model.exclude_frozen_parameters (it holds only the trained tensors)")
    args = parser.parse_args(argv)
    export_dit(args.ckpt, args.out, getattr(torch, args.dtype) if args.dtype else None, args.base)
