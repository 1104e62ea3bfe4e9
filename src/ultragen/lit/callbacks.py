"""Callbacks: mp4 writer for `predict`, sample videos and procedural sample metrics at validation."""

from __future__ import annotations

import logging
from pathlib import Path

import av
import lightning as L
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

from ultragen.data.procedural import Mode, procedural_prompts
from ultragen.eval.figures import frame_strip, middle_frames, progress_grid, save_png
from ultragen.eval.objects import score_samples

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


def generate_with_steps(pl_module, prompts: list[str], seeds: list[int], steps: int | None) -> Tensor:
    """pl_module.generate with the sampler's step count temporarily set to `steps` (None keeps it)."""
    sampling, default = pl_module.sampling, pl_module.sampling.steps
    sampling.steps = steps or default
    try:
        return pl_module.generate(prompts, seeds)
    finally:
        sampling.steps = default


def tensorboard_writers(trainer: L.Trainer) -> list:
    """SummaryWriters of the trainer's TensorBoard loggers."""
    return [logger.experiment for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]


def log_progress(trainer: L.Trainer, history: list, videos: Tensor, tag: str) -> None:
    """Append this validation's middle frames to `history` and log the prompts-by-checkpoint grid as image `tag`."""
    history.append((trainer.global_step, middle_frames(videos)))
    grid = np.asarray(progress_grid(history))
    for writer in tensorboard_writers(trainer):
        writer.add_image(tag, grid, trainer.global_step, dataformats="HWC")


class SampleVideos(L.Callback):
    """At the end of validation, samples `prompts` and logs them as TensorBoard videos (`samples`), and their middle
    frames at every validation so far side by side (`samples/by_step`: same prompts and seeds, one column a step)."""

    def __init__(self, prompts: list[str], every_n_epochs: int = 1, steps: int | None = None, seed: int = 0):
        self.prompts, self.every_n_epochs, self.steps, self.seed = prompts, every_n_epochs, steps, seed
        self.history: list[tuple[int, list[np.ndarray]]] = []

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.current_epoch % self.every_n_epochs or not trainer.is_global_zero:
            return
        seeds = [self.seed + i for i in range(len(self.prompts))]
        videos = generate_with_steps(pl_module, self.prompts, seeds, self.steps)
        for writer in tensorboard_writers(trainer):
            writer.add_video("samples", videos.permute(0, 2, 1, 3, 4), trainer.global_step, fps=pl_module.sampling.fps)
        log_progress(trainer, self.history, videos, "samples/by_step")


class ProceduralMetrics(L.Callback):
    """At the end of validation, samples held-out procedural prompts and scores them against their ground truth.

    Scenes `0..num_videos-1` of the procedural set `seed` (one the training data does not use) are generated at
    the module's sampling size with seeds 0..num_videos-1, then scored by `ultragen.eval.score_samples`: colour and
    direction accuracy, count and trajectory error, logged as `samples/*`. The frame strip goes to TensorBoard
    (`samples/strip`) and, when `strip` is set, to that PNG; `samples/by_step` shows the middle frames of every
    validation so far side by side.
    """

    def __init__(
        self,
        num_videos: int = 16,
        seed: int = 1000,
        counts: list[int] | None = None,
        mode: Mode = "objects",
        steps: int | None = None,
        every_n_epochs: int = 1,
        strip: str | None = None,
    ):
        if num_videos < 1:
            raise ValueError(f"num_videos={num_videos} must be >= 1")
        self.scenes = procedural_prompts(num_videos, seed, tuple(counts or (1,)), mode)
        self.steps, self.every_n_epochs, self.strip = steps, every_n_epochs, strip
        self.history: list[tuple[int, list[np.ndarray]]] = []

    def evaluate(self, pl_module) -> tuple[dict[str, float], Tensor]:
        """Metrics and the sampled videos (B, 3, F, H, W) uint8 of the held-out prompts."""
        s = pl_module.sampling
        captions = [scene.caption() for scene in self.scenes]
        videos = generate_with_steps(pl_module, captions, list(range(len(captions))), self.steps)
        truths = [scene.truth(s.frames, s.height, s.width) for scene in self.scenes]
        return score_samples(videos, truths), videos

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.current_epoch % self.every_n_epochs or not trainer.is_global_zero:
            return
        metrics, videos = self.evaluate(pl_module)
        for name, value in metrics.items():
            if name != "n":
                pl_module.log(f"samples/{name}", float(value), rank_zero_only=True)
        strip = frame_strip(videos, [scene.caption() for scene in self.scenes])
        for writer in tensorboard_writers(trainer):
            writer.add_image("samples/strip", np.asarray(strip), trainer.global_step, dataformats="HWC")
        if self.strip:
            save_png(strip, self.strip)
        log_progress(trainer, self.history, videos, "samples/by_step")
        log.info(
            "step %d, %d held-out prompts: colour %.0f%%, direction %.0f%%, count error %.2f, trajectory error %.3f",
            trainer.global_step, metrics["n"], 100 * metrics["color_correct"], 100 * metrics["direction_correct"],
            metrics["count_error"], metrics["trajectory_error"],
        )
