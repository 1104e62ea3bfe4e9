"""Temporal consistency, the CLIP text-video score and per-patch image quality (CLIP-IQA).

- `temporal_clip`: mean cosine similarity of the CLIP image embeddings of every pair of consecutive frames
  (the paper's temporal consistency; METHOD.md §3.5 recommends ViT-L/14). Needs CLIP weights.
- `temporal_ssim`: the weight-free fallback, mean SSIM (torchmetrics; Gaussian window 11, sigma 1.5, data range
  255) of every pair of consecutive frames. 1 for a static video; it measures pixel stability, so camera motion
  lowers it as much as flicker does: compare it only between videos of similar motion.
- `clip_score`: per prompt, the mean over `MetricSettings.frames` uniformly sampled frames of the raw cosine
  between the frame's and the prompt's CLIP embeddings (not x100, not clipped at 0).
- `patch_clip_iqa`: CLIP-IQA (Wang et al., AAAI 2023) on native-resolution `MetricSettings.patch` patches of the
  sampled frames, so 4K detail is judged at its own scale instead of after a resize to 224 px: per patch,
  softmax(100 * [cos(patch, "Good photo."), cos(patch, "Bad photo.")]) of the first, averaged over patches and frames.
"""

from __future__ import annotations

import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from ultragen.eval.features import ClipFeatures
from ultragen.eval.hd import DEFAULTS, MetricSettings, patch_grid, uniform_frames, video_frames
from ultragen.eval.objects import Video


IQA_PROMPTS = ("Good photo.", "Bad photo.")  # CLIP-IQA's antonym pair
IQA_LOGIT_SCALE = 100.0  # CLIP's trained logit scale


def _check_pairs(frames: torch.Tensor) -> None:
    if len(frames) < 2:
        raise ValueError(f"a video of {len(frames)} frame has no consecutive pair; temporal metrics need >= 2 frames")


@torch.no_grad()
def temporal_ssim(video: Video, settings: MetricSettings = DEFAULTS) -> float:
    """Mean SSIM of consecutive frames (all of them) on [0, 255]; 1 for a static video."""
    frames = video_frames(video)
    _check_pairs(frames)
    scores = []
    for start in range(0, len(frames) - 1, settings.batch):
        chunk = frames[start:start + settings.batch + 1].float()  # batch pairs share their boundary frame
        scores.append(structural_similarity_index_measure(chunk[1:], chunk[:-1], data_range=255.0, reduction="none"))
    return torch.cat(scores).mean().item()


@torch.no_grad()
def temporal_clip(video: Video, clip: ClipFeatures, settings: MetricSettings = DEFAULTS) -> float:
    """Mean cosine of the CLIP image embeddings of consecutive frames (all of them)."""
    frames = video_frames(video)
    _check_pairs(frames)
    embeddings = torch.cat([clip.images(chunk) for chunk in frames.split(settings.batch)])  # (F, D) unit vectors
    return (embeddings[1:] * embeddings[:-1]).sum(-1).mean().item()


@torch.no_grad()
def clip_score(video: Video, prompt: str, clip: ClipFeatures, settings: MetricSettings = DEFAULTS) -> float:
    """Mean over uniformly sampled frames of cosine(CLIP image embedding, CLIP text embedding of `prompt`)."""
    frames = video_frames(video)
    picks = frames[uniform_frames(len(frames), settings.frames)]
    images = torch.cat([clip.images(chunk) for chunk in picks.split(settings.batch)])  # (N, D)
    return (images @ clip.texts([prompt])[0]).mean().item()


@torch.no_grad()
def patch_clip_iqa(video: Video, clip: ClipFeatures, settings: MetricSettings = DEFAULTS) -> float:
    """Mean CLIP-IQA quality in [0, 1] of the native-resolution patches of uniformly sampled frames."""
    frames = video_frames(video)
    frames = frames[uniform_frames(len(frames), settings.frames)]
    rows, cols, top, left = patch_grid(frames.shape[2], frames.shape[3], settings)
    p = settings.patch
    patches = frames[:, :, top:top + rows * p, left:left + cols * p].unfold(2, p, p).unfold(3, p, p)
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, p, p)  # (F·rows·cols, 3, p, p)
    images = torch.cat([clip.images(chunk) for chunk in patches.split(settings.batch)])  # (N, D)
    logits = IQA_LOGIT_SCALE * images @ clip.texts(list(IQA_PROMPTS)).T  # (N, 2)
    return logits.softmax(-1)[:, 0].mean().item()
