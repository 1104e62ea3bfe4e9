"""Callbacks: mp4 writer for `predict`, sample videos in TensorBoard at validation."""

from __future__ import annotations

import logging
from pathlib import Path

import av
import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

log = logging.getLogger(__name__)


def write_mp4(path: str | Path, video: Tensor, fps: int, crf: int = 18) -> Path:
    """Write (3, F, H, W) uint8 as h264 mp4 (yuv420p) with PyAV; written to a temp name, then renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = video.permute(1, 2, 3, 0).contiguous().numpy()  # (F, H, W, 3)
    tmp = path.with_name(path.name + ".partial")
    with av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode())
    tmp.replace(path)
    return path


class VideoWriter(BasePredictionWriter):
    """Writes each predicted video to `output_dir/KEY.mp4` (fps from the module's sampling config)."""

    def __init__(self, output_dir: str = "runs/samples"):
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        for key, video in zip(prediction["key"], prediction["video"]):
            path = write_mp4(self.output_dir / f"{key}.mp4", video, fps=pl_module.sampling.fps)
            log.info("wrote %s", path)


class SampleVideos(L.Callback):
    """At the end of validation, samples `prompts` and logs them as TensorBoard videos."""

    def __init__(self, prompts: list[str], every_n_epochs: int = 1, steps: int | None = None, seed: int = 0):
        self.prompts, self.every_n_epochs, self.steps, self.seed = prompts, every_n_epochs, steps, seed

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.current_epoch % self.every_n_epochs or not trainer.is_global_zero:
            return
        sampling, steps = pl_module.sampling, pl_module.sampling.steps
        sampling.steps = self.steps or steps
        try:
            videos = pl_module.generate(self.prompts, [self.seed + i for i in range(len(self.prompts))])
        finally:
            sampling.steps = steps
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_video("samples", videos.permute(0, 2, 1, 3, 4), trainer.global_step, fps=sampling.fps)
