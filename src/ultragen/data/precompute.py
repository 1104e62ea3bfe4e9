"""`data encode`: precompute codec latents and text embeddings into new shards (safetensors, never pickle)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
import yaml
from safetensors.torch import save as save_safetensors
from tqdm import tqdm

from ultragen.codecs.base import VideoCodec
from ultragen.data.shards import (
    ShardWriter,
    Skip,
    SkipCounter,
    SkipError,
    read_samples,
    sample_meta,
    sample_source,
    shard_bytes,
)
from ultragen.data.video import decode_frames, probe
from ultragen.text.base import TextEncoder

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def instantiate(spec: str | dict, base: type) -> Any:
    """A `base` subclass from {class_path, init_args}: a dict, JSON/YAML text, a YAML file or a bare class path."""
    from jsonargparse import ArgumentParser

    if isinstance(spec, str):
        spec = yaml.safe_load(Path(spec).read_text()) if Path(spec).is_file() else yaml.safe_load(spec)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--obj", type=base, required=True)
    try:
        cfg = parser.parse_object({"obj": spec})
    except Exception as exn:  # jsonargparse reports every kind of bad spec as its own error types
        raise ValueError(f"cannot build a {base.__name__} from {spec!r}: {exn}") from exn
    return parser.instantiate_classes(cfg).obj


def _class_path(obj: object) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def read_video(data: bytes, threads: int = 0) -> torch.Tensor:
    """All frames of an mp4 as float32 (3, F, H, W) in [-1, 1]."""
    info = probe(data)
    frames = np.empty((info.frames, info.height, info.width, 3), np.uint8)
    decode_frames(data, range(info.frames), frames, threads=threads)
    return torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1.0


@dataclass
class EncodeReport:
    """Encoded sample and shard counts, and skipped samples."""

    samples: int = 0
    shards: list[Path] = field(default_factory=list)
    skipped: int = 0


@torch.no_grad()
def encode_shards(
    urls: Sequence[str],
    out_dir: str | Path,
    codec: VideoCodec,
    text_encoder: TextEncoder,
    dtype: str = "bfloat16",
    device: str = "cpu",
    overwrite: bool = False,
    progress: bool = True,
) -> EncodeReport:
    """Write one output shard per input shard (same name) with KEY.latents.safetensors, KEY.text.safetensors, KEY.json.

    Latents are codec.encode of the whole stored clip, (C, T, h, w); text is text_encoder([caption])[0], (L, D).
    Existing output shards are kept (resumable) unless overwrite is set.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} must be one of {sorted(DTYPES)}")
    out_dir = Path(out_dir)
    codec, text_encoder = codec.to(device).eval(), text_encoder.to(device).eval()
    provenance = {"codec": _class_path(codec), "text_encoder": _class_path(text_encoder)}
    report, skips = EncodeReport(), SkipCounter()
    names = [Path(url).name for url in urls]
    if len(set(names)) != len(names):
        raise ValueError("input shards must have distinct file names (outputs reuse them)")
    for url, name in zip(tqdm(urls, desc=f"encode -> {out_dir}", unit="shard", disable=not progress), names):
        target = out_dir / name
        if target.exists() and not overwrite:
            logger.info("keeping existing %s", target)
            report.shards.append(target)
            continue
        with ShardWriter(out_dir, name=name) as writer:
            for sample in read_samples([url], handler=skips):
                try:
                    meta = sample_meta(sample)
                    if "mp4" not in sample:
                        raise ValueError(f"sample {sample['__key__']!r} has no KEY.mp4 to encode")
                    video = read_video(sample["mp4"]).unsqueeze(0).to(device)  # (1, 3, F, H, W)
                    latents = codec.encode(video)[0].to(DTYPES[dtype]).cpu().contiguous()  # (C, T, h, w)
                    text = text_encoder([meta["caption"]])[0].to(DTYPES[dtype]).cpu().contiguous()  # (L, D)
                    meta |= provenance | {"latent_shape": list(latents.shape), "text_shape": list(text.shape)}
                    meta["dtype"] = dtype
                    latents_bytes = save_safetensors({"latents": latents}, {"codec": provenance["codec"]})
                    text_bytes = save_safetensors({"text": text}, {"encoder": provenance["text_encoder"]})
                    writer.write(  # raises, writing nothing, for an unsafe key
                        {
                            "__key__": sample["__key__"],
                            "json": shard_bytes(meta),
                            "latents.safetensors": latents_bytes,
                            "text.safetensors": text_bytes,
                        }
                    )
                except SkipError as exn:
                    skips(exn)
                    continue
                except (av.FFmpegError, ValueError, OSError) as exn:
                    detail = f"{type(exn).__name__}: {exn}"
                    skips(SkipError(Skip(sample_source(sample), "encode", "unreadable", detail)))
                    continue
                skips.ok()
                report.samples += 1
        if target.exists():
            report.shards.append(target)
    report.skipped = skips.total
    return report
