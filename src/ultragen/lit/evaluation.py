"""`ultragen test` that generates and scores, and the TensorBoard views of a run's attention cost.

`TestMetrics` samples one video per held-out caption of the test shards (seed fixed per prompt), scores the set
with `ultragen.eval.suite` against the reference clips, adds the procedural object metrics where the shards carry
ground truth, and writes the table as JSON and CSV next to the run's TensorBoard events, as scalars and as the run's
HParams entry. `AttentionCostTable` writes the per-layer attention FLOPs of the model at its sampling size.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import zlib
from pathlib import Path

import lightning as L
import numpy as np
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

from ultragen.data.procedural import Truth
from ultragen.eval.figures import frame_strip
from ultragen.eval.objects import score_samples, to_uint8
from ultragen.eval.features import MetricWeights
from ultragen.eval.hd import MetricSettings
from ultragen.eval.suite import METRICS, compute_metrics
from ultragen.lit.callbacks import generate_with_steps, tensorboard_writers

log = logging.getLogger(__name__)

OBJECT_METRICS = ("color_correct", "direction_correct", "count_error", "trajectory_error")


def prompt_seed(prompt: str, base: int = 0) -> int:
    """A seed fixed by the prompt's text (not its position in the set), so every run samples a prompt alike."""
    return base + zlib.crc32(prompt.encode("utf-8"))


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to a temporary name, then rename: a killed run never leaves a half-written table."""
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text)
    tmp.replace(path)


def write_table(values: dict[str, float], skipped: dict[str, str], out_dir: Path, info: dict) -> tuple[Path, Path]:
    """`test_metrics.json` (values, skipped metrics with their reason, run info) and `test_metrics.csv`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = out_dir / "test_metrics.json", out_dir / "test_metrics.csv"
    write_atomic(json_path, json.dumps({"metrics": values, "skipped": skipped} | info, indent=2) + "\n")
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["metric", "value", "skipped"])
    writer.writerows([name, repr(float(value)), ""] for name, value in values.items())
    writer.writerows([name, "", reason] for name, reason in skipped.items())
    write_atomic(csv_path, table.getvalue())
    return json_path, csv_path


class TestMetrics(L.Callback):
    """Generate from the test shards' captions and score the samples (`ultragen test`).

    `metrics` names `ultragen.eval.suite` metrics (default: all); `--metrics` on the command line sets it. Those
    whose weight file (`weights`) is missing are skipped with a warning naming the file. Colour, direction, count and
    trajectory are added for clips whose shard json carries procedural ground truth. `settings` fixes kernels,
    value range, frame sampling and patching (`ultragen.eval.hd.MetricSettings`). `max_videos` caps the number of
    test clips sampled; `steps` overrides the sampler's step count.
    """

    def __init__(
        self,
        metrics: list[str] | None = None,
        weights: MetricWeights | None = None,
        settings: MetricSettings | None = None,
        max_videos: int | None = None,
        steps: int | None = None,
        seed: int = 0,
    ):
        unknown = sorted(set(metrics or ()) - set(METRICS))
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; choose from {list(METRICS)}")
        if max_videos is not None and max_videos < 1:
            raise ValueError(f"max_videos={max_videos} must be >= 1 (or null for every test clip)")
        self.metrics = list(METRICS if metrics is None else metrics)
        self.weights, self.settings = weights or MetricWeights(), settings or MetricSettings()
        self.max_videos, self.steps, self.seed = max_videos, steps, seed

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module) -> None:
        self.generated: list[Tensor] = []
        self.references: list[Tensor] = []
        self.prompts: list[str] = []
        self.truths: list[Truth | None] = []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        room = len(batch["caption"]) if self.max_videos is None else self.max_videos - len(self.prompts)
        if room <= 0:
            return
        prompts = list(batch["caption"][:room])
        seeds = [prompt_seed(p, self.seed) for p in prompts]
        videos = generate_with_steps(pl_module, prompts, seeds, self.steps)  # (B, 3, F, H, W) uint8
        self.generated += list(videos)
        if "video" in batch:
            self.references += [to_uint8(v).cpu() for v in batch["video"][:room]]
        truths = batch.get("truth") or [None] * len(prompts)
        self.truths += [None if t is None else Truth.from_json(t) for t in truths[:room]]
        self.prompts += prompts

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        if not self.prompts:
            raise RuntimeError("the test run sampled no video; check data.init_args.test_shards and limit_test_batches")
        values, skipped = compute_metrics(self.metrics, self.generated, self.references, self.prompts, self.weights,
                                          self.settings, pl_module.device)
        scored = [(v, t) for v, t in zip(self.generated, self.truths) if t is not None]
        if scored:
            objects = score_samples([v for v, _ in scored], [t for _, t in scored])
            values |= {name: float(objects[name]) for name in OBJECT_METRICS}
        for name, value in values.items():
            pl_module.log(f"test/{name}", value, rank_zero_only=True)
        if not trainer.is_global_zero:
            return
        info = {"step": trainer.global_step, "ckpt_path": trainer.ckpt_path, "videos": len(self.prompts),
                "with_truth": len(scored), "prompts": self.prompts}
        out_dir = Path(trainer.log_dir or trainer.default_root_dir)
        paths = write_table(values, skipped, out_dir, info)
        strip = np.asarray(frame_strip(self.generated[:16], self.prompts[:16]))
        for writer in tensorboard_writers(trainer):
            writer.add_image("test/samples", strip, trainer.global_step, dataformats="HWC")
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.log_hyperparams(
                    {"ckpt_path": str(trainer.ckpt_path), **pl_module.hparams},
                    {f"hparams/{name}": value for name, value in values.items()},
                )
        log.info("test: %d videos, %s; wrote %s and %s", len(self.prompts),
                 ", ".join(f"{k} {v:.4g}" for k, v in values.items()), *paths)


class AttentionCostTable(L.Callback):
    """At the start of fit and test, the per-layer attention FLOPs of the model at its sampling size, as TensorBoard
    text (`model/attention_cost`)."""

    def log_table(self, trainer: L.Trainer, pl_module) -> None:
        from ultragen.cost import report  # `ultragen cost` reads configs through the CLI, which imports this module

        s, net = pl_module.sampling, pl_module.net
        grid = net.token_grid(*pl_module.codec.latent_shape(s.frames, s.height, s.width)[1:])
        text_len = getattr(pl_module.text_encoder, "max_length", 512)
        table = report([b.self_attn.strategy for b in net.blocks], grid, net.blocks[0].ffn[0].out_features, text_len)
        for writer in tensorboard_writers(trainer):
            writer.add_text("model/attention_cost", "\n".join("    " + line for line in table.splitlines()),
                            trainer.global_step)

    def on_fit_start(self, trainer: L.Trainer, pl_module) -> None:
        self.log_table(trainer, pl_module)

    def on_test_start(self, trainer: L.Trainer, pl_module) -> None:
        self.log_table(trainer, pl_module)
