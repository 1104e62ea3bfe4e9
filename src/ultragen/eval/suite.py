"""One entry point for `ultragen test`: compute named metrics on generated (and reference) videos.

`compute_metrics` loads only the backbones the requested metrics need, from `MetricWeights` (local files). A
missing file skips every metric that needs it with one warning naming the file and where to get it; the reason is
returned next to the values, so a report shows the gap instead of a number from random weights.

Values: per-video metrics (`hd_mse`, `hd_lpips`, `clip_score`, `temporal_ssim`, `temporal_clip`,
`patch_clip_iqa`) are means over
the generated videos; `hd_fvd` comes with `hd_fvd_patches` and `hd_fvd_reference_patches` (patch-clip counts) and
`hd_fvd_coverage` (mean pixel fraction of the generated frames inside a patch); the backbone is logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ultragen.eval.consistency import clip_score, patch_clip_iqa, temporal_clip, temporal_ssim
from ultragen.eval.features import MetricWeights, MissingWeightsError, load_clip, load_lpips, load_video_backbone
from ultragen.eval.hd import DEFAULTS, MetricSettings, hd_fvd, hd_lpips, hd_mse
from ultragen.eval.objects import Video

log = logging.getLogger(__name__)

METRICS: tuple[str, ...] = (
    "hd_mse", "hd_lpips", "hd_fvd", "clip_score", "temporal_ssim", "temporal_clip", "patch_clip_iqa"
)
BACKBONE_OF = {
    "hd_lpips": "lpips", "hd_fvd": "fvd", "clip_score": "clip", "temporal_clip": "clip", "patch_clip_iqa": "clip"
}


def _loaders(weights: MetricWeights, settings: MetricSettings) -> dict[str, Callable[[], nn.Module]]:
    return {
        "lpips": lambda: load_lpips(weights.lpips, settings.lpips_net),
        "fvd": lambda: load_video_backbone(weights.fvd, settings.fvd_backbone),
        "clip": lambda: load_clip(weights.clip),
    }


def load_backbones(names: Sequence[str], weights: MetricWeights, settings: MetricSettings = DEFAULTS,
                   device: str | torch.device = "cpu") -> tuple[dict[str, nn.Module], dict[str, str]]:
    """Backbones the metrics `names` need, on `device`, and skipped metric -> reason (one warning per missing file)."""
    loaders, backbones, skipped = _loaders(weights, settings), {}, {}
    for kind in dict.fromkeys(BACKBONE_OF[n] for n in names if n in BACKBONE_OF):
        try:
            backbones[kind] = loaders[kind]().to(device)
        except MissingWeightsError as err:
            users = [n for n in names if BACKBONE_OF.get(n) == kind]
            log.warning("%s; skipping %s", err, ", ".join(users))
            skipped |= {n: str(err) for n in users}
    return backbones, skipped


def compute_metrics(
    names: Sequence[str],
    generated: Sequence[Video],
    references: Sequence[Video] = (),
    prompts: Sequence[str] = (),
    weights: MetricWeights = MetricWeights(),
    settings: MetricSettings = DEFAULTS,
    device: str | torch.device = "cpu",
) -> tuple[dict[str, float], dict[str, str]]:
    """(values, skipped name -> reason) of the metrics `names` on uint8 (F, H, W, 3) videos (sizes may differ).

    `prompts` (one per generated video) are needed for clip_score, `references` for hd_fvd."""
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {list(METRICS)}")
    if not generated:
        raise ValueError("compute_metrics got no generated videos; pass at least one")
    if "clip_score" in names and len(prompts) != len(generated):
        raise ValueError(f"clip_score needs one prompt per video: got {len(prompts)} for {len(generated)} videos")
    if "hd_fvd" in names and not references:
        raise ValueError("hd_fvd needs reference videos; pass references or drop hd_fvd from the metrics")
    backbones, skipped = load_backbones(names, weights, settings, device)
    per_video = {
        "hd_mse": lambda v, _: hd_mse(v, settings),
        "hd_lpips": lambda v, _: hd_lpips(v, backbones["lpips"], settings),
        "clip_score": lambda v, i: clip_score(v, prompts[i], backbones["clip"], settings),
        "temporal_ssim": lambda v, _: temporal_ssim(v, settings),
        "temporal_clip": lambda v, _: temporal_clip(v, backbones["clip"], settings),
        "patch_clip_iqa": lambda v, _: patch_clip_iqa(v, backbones["clip"], settings),
    }
    values: dict[str, float] = {}
    for name in dict.fromkeys(names):
        if name in skipped:
            continue
        if name == "hd_fvd":
            result = hd_fvd(generated, references, backbones["fvd"], settings)
            log.info("hd_fvd %.3f with %s on %d generated / %d reference patch-clips (%.1f%% of the pixels)",
                     result.distance, settings.fvd_backbone, result.generated_patches, result.reference_patches,
                     100 * result.coverage)
            values |= {"hd_fvd": result.distance, "hd_fvd_patches": float(result.generated_patches),
                       "hd_fvd_reference_patches": float(result.reference_patches), "hd_fvd_coverage": result.coverage}
        else:
            values[name] = float(np.mean([per_video[name](torch.as_tensor(v).to(device), i)
                                          for i, v in enumerate(generated)]))
    return values, skipped
