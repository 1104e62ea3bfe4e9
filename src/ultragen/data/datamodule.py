"""VideoShardDataModule: WebDataset video shards streamed as token-balanced, single-bucket batches."""

from __future__ import annotations

import itertools
import json
import logging
import math
import random
import warnings
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Literal

import av
import lightning as L
import torch
import webdataset as wds
from safetensors.torch import load as load_safetensors
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info

from ultragen.data.buckets import Bucket, TokenBudget, bucket_batches, nearest_bucket
from ultragen.data.resumable import POSITION, ResumableLoader, trainer_epoch
from ultragen.data.shards import (
    Skip,
    SkipCounter,
    SkipError,
    expand_shards,
    read_samples,
    sample_meta,
    sample_source,
)
from ultragen.data.video import cover_size, decode_frames, frame_indices, frame_step, max_frames, probe

logger = logging.getLogger(__name__)

PRECOMPUTED = ("latents.safetensors", "text.safetensors")


# --------------------------------------------------------------------------------------------------
# Shard assignment
# --------------------------------------------------------------------------------------------------


def assign_shards(urls: Sequence[str], rank: int, world_size: int, worker: int, num_workers: int) -> list[str]:
    """Disjoint shards of one (rank, worker): every world_size-th from rank, then every num_workers-th from worker."""
    mine = list(urls)[rank::world_size][worker::num_workers]
    if not mine:
        raise ValueError(
            f"rank {rank}/{world_size}, worker {worker}/{num_workers} got none of {len(urls)} shards; "
            "write at least world_size × num_workers shards (smaller --max-count) or use fewer workers"
        )
    return mine


def worker_share(batches: int, worker: int, num_workers: int) -> int:
    """Batches this worker yields so that the workers of a rank yield exactly `batches` together."""
    return batches // num_workers + (worker < batches % num_workers)


def load_tensor(data: bytes, name: str) -> Tensor:
    """The tensor `name` of a safetensors blob."""
    tensors = load_safetensors(bytes(data))
    if name not in tensors:
        raise ValueError(f"safetensors member has no tensor {name!r} (found {sorted(tensors)})")
    return tensors[name]


def _batch_buffer(shape: tuple[int, ...]) -> Tensor:
    """Empty uint8 tensor; inside a DataLoader worker it lives in shared memory, so the hand-over copies nothing."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=torch.uint8)
    storage = torch.UntypedStorage._new_shared(math.prod(shape))  # as torch's default_collate does
    return torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)


# --------------------------------------------------------------------------------------------------
# One split as an iterable of batches
# --------------------------------------------------------------------------------------------------


class ShardStream(IterableDataset):
    """Batches of one split: disjoint shards per rank and worker, raw-byte shuffle, bucket batching, PyAV decode.

    With `batches` set the shards cycle forever (reshuffled each pass when training) and each rank yields exactly
    `batches` batches; with `batches=None` the shards are read once and leftover partial batches are flushed.

    Training order, shuffle and crops of a worker come from `random.Random` seeded by (seed, epoch, rank, worker),
    so an epoch is the same in every run. `set_position(epoch, start, consumed)` resumes it after `start` batches
    of the rank: each worker replays its part of the epoch up to batching (reading and planning, no decoding) and
    drops the batch plans it had used, `consumed[part]` (a plan whose every clip failed to decode was used without
    giving a batch, so training batches carry their part and plan count under `POSITION` for the checkpoint). The
    DataLoader hands out worker batches round-robin from worker 0, so in a resumed epoch worker w plays the part of
    worker (w + start) % num_workers and the rank's batches keep the uninterrupted order.
    """

    def __init__(
        self,
        urls: Sequence[str],
        buckets: Sequence[Bucket],
        budget: TokenBudget,
        batches: int | None,
        train: bool,
        shuffle_buffer: int = 16,
        frame_stride: int = 1,
        fps: float | None = None,
        crop: Literal["random", "center"] = "random",
        resize: bool = False,
        use_precomputed: bool = True,
        decode_threads: int = 0,
        seed: int = 0,
    ):
        super().__init__()
        self.urls, self.buckets, self.budget = list(urls), list(buckets), budget
        self.batches, self.train, self.shuffle_buffer = batches, train, shuffle_buffer
        self.frame_stride, self.fps, self.crop, self.resize = frame_stride, fps, crop, resize
        self.use_precomputed, self.decode_threads = use_precomputed, decode_threads
        self.seed, self.epoch, self.start, self.consumed = seed, 0, 0, {}

    def set_position(self, epoch: int, start: int, consumed: dict[int, int]) -> None:
        """The next iteration is epoch `epoch` of the stream after its first `start` batches on this rank, for which
        worker part p used `consumed[p]` batch plans (none if absent)."""
        self.epoch, self.start, self.consumed = epoch, start, dict(consumed)

    def __len__(self) -> int:
        if self.batches is None:
            raise TypeError("a single pass over shards has no known length")
        return self.batches

    def __iter__(self) -> Iterator[dict]:
        rank, world_size, worker, num_workers = wds.utils.pytorch_worker_info()
        part = (worker + self.start) % num_workers  # the worker whose batch comes next in the rank's order
        urls = assign_shards(self.urls, rank, world_size, part, num_workers)
        rng = random.Random(f"{self.seed}-{self.epoch}-{rank}-{part}") if self.train else None
        skips = SkipCounter()
        stages = [partial(self._samples, urls, rng, skips)]
        if rng is not None and self.shuffle_buffer > 1:
            stages.append(wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng))
        stages += [
            wds.map(partial(self.plan, rng=rng, skips=skips), handler=skips),
            partial(bucket_batches, budget=self.budget, partial=self.batches is None),
            partial(self._deliver, part=part, skips=skips),
            partial(self._count_skips, skips=skips, urls=urls),
        ]
        pipeline = wds.DataPipeline(*stages)
        if self.batches is None:
            return iter(pipeline)
        share = worker_share(self.batches, part, num_workers) - worker_share(self.start, part, num_workers)
        return itertools.islice(iter(pipeline), share)

    def _deliver(self, plans: Iterator[list[dict]], part: int, skips: SkipCounter) -> Iterator[dict]:
        """Decode batch plans into batches; the plans used before a resume are dropped undecoded (their skips were
        reported then), and training batches are marked (part, plans used) for `ResumableLoader`."""
        used = self.consumed.get(part, 0) if self.start else 0
        plans = iter(plans)
        if used:
            for _ in itertools.islice(plans, used):
                pass
            skips.take()
        for group in plans:
            used += 1
            batch = self.materialize(group, skips)
            if batch is not None:
                yield batch if self.batches is None else batch | {POSITION: (part, used)}

    def _samples(self, urls: list[str], rng: random.Random | None, skips: SkipCounter) -> Iterator[dict]:
        """Raw samples of these shards: once, or cycled forever (reshuffled per pass when training)."""
        while True:
            order = list(urls)
            if rng is not None:
                rng.shuffle(order)
            count = 0
            for sample in read_samples(order, handler=skips):
                count += 1
                yield sample
            if self.batches is None:
                return
            if count == 0:
                raise RuntimeError(f"shards {order} hold no readable samples ({skips.summary()})")

    def plan(self, sample: dict, rng: random.Random | None, skips: SkipCounter) -> dict:
        """Parse metadata and pick the bucket, frame indices and crop (cheap); raw bytes stay undecoded.

        Raises SkipError naming the shard, the key, the stage ("parse" or "plan") and the reason.
        """
        try:
            return self._plan(sample, rng, skips)
        except SkipError:
            raise
        except (av.FFmpegError, ValueError, OSError) as exn:
            raise SkipError(Skip(sample_source(sample), "plan", "unreadable", f"{type(exn).__name__}: {exn}")) from exn

    def _plan(self, sample: dict, rng: random.Random | None, skips: SkipCounter) -> dict:
        meta = sample_meta(sample)
        key = sample["__key__"]
        out = {"key": key, "caption": meta["caption"], "source": sample_source(sample), "truth": meta.get("truth")}
        if self.use_precomputed and all(ext in sample for ext in PRECOMPUTED):
            latents = load_tensor(sample["latents.safetensors"], "latents")  # (C, T, h, w)
            text = load_tensor(sample["text.safetensors"], "text")  # (L, D)
            if latents.dim() != 4 or text.dim() != 2:
                raise ValueError(
                    f"sample {key!r}: latents must be (C, T, h, w) and text (L, D), "
                    f"got {tuple(latents.shape)} and {tuple(text.shape)}"
                )
            skips.ok()
            bucket = ("latents", tuple(latents.shape), latents.dtype, tuple(text.shape), text.dtype)
            tokens = self.budget.grid_tokens(*latents.shape[1:])
            return out | {"latents": latents, "text": text, "__bucket__": bucket, "__tokens__": tokens}
        if "mp4" not in sample:
            raise ValueError(f"sample {key!r} has neither KEY.mp4 nor both precomputed {PRECOMPUTED}")
        if not all(k in meta for k in ("frames", "fps", "height", "width")):
            info = probe(sample["mp4"])
            meta = {"frames": info.frames, "fps": info.fps, "height": info.height, "width": info.width} | meta
        frames, height, width = int(meta["frames"]), int(meta["height"]), int(meta["width"])
        step = frame_step(float(meta["fps"]), self.fps, self.frame_stride)
        try:
            bucket = nearest_bucket(self.buckets, height, width, max_frames(frames, step), fit=not self.resize)
        except ValueError as exn:
            raise SkipError(Skip(out["source"], "plan", "no bucket fits", str(exn))) from exn
        size = cover_size(height, width, bucket.height, bucket.width) if self.resize else (height, width)
        slack = (frames - 1 - round((bucket.frames - 1) * step), size[0] - bucket.height, size[1] - bucket.width)
        if rng is not None and self.crop == "random":
            start, top, left = (rng.randint(0, s) for s in slack)
        else:
            start, top, left = (s // 2 for s in slack)
        skips.ok()
        return out | {
            "mp4": sample["mp4"],
            "indices": frame_indices(bucket.frames, step, start),
            "top": top,
            "left": left,
            "resize": size if self.resize else None,
            "__bucket__": bucket,
            "__tokens__": self.budget.tokens(bucket),
        }

    def materialize(self, samples: list[dict], skips: SkipCounter) -> dict | None:
        """Decode one single-bucket group into a batch; samples that fail to decode are dropped and counted."""
        batch: dict = {}
        if "latents" in samples[0]:
            kept = samples
            batch["latents"] = default_collate([s["latents"] for s in samples])  # (B, C, T, h, w)
            batch["text"] = default_collate([s["text"] for s in samples])  # (B, L, D)
        else:
            bucket = samples[0]["__bucket__"]
            video = _batch_buffer((len(samples), bucket.frames, bucket.height, bucket.width, 3))  # (B, F, H, W, 3)
            kept = []
            for s in samples:
                try:
                    out = video[len(kept)].numpy()
                    decode_frames(s["mp4"], s["indices"], out, s["top"], s["left"], s["resize"], self.decode_threads)
                except (av.FFmpegError, ValueError, OSError) as exn:
                    skips(SkipError(Skip(s["source"], "decode", "undecodable video", f"{type(exn).__name__}: {exn}")))
                    continue
                skips.ok()
                kept.append(s)
            if not kept:
                return None
            batch["video"] = video[: len(kept)].permute(0, 4, 1, 2, 3)  # (B, 3, F, H, W) uint8 view
        batch["caption"] = [s["caption"] for s in kept]
        batch["key"] = [s["key"] for s in kept]
        if any(s["truth"] is not None for s in kept):
            batch["truth"] = [None if s["truth"] is None else json.dumps(s["truth"]) for s in kept]
        return batch

    def _count_skips(self, batches: Iterator[dict], skips: SkipCounter, urls: list[str]) -> Iterator[dict]:
        """Attach `skipped`, the skips since the previous batch; a single pass holds one batch back to count all, and
        raises with the counts per reason when it yields nothing."""
        held = None
        for batch in batches:
            if self.batches is not None:
                yield batch | {"skipped": torch.tensor(skips.take())}
                continue
            if held is not None:
                yield held | {"skipped": torch.tensor(skips.take())}
            held = batch
        if held is not None:
            yield held | {"skipped": torch.tensor(skips.take())}
        elif self.batches is None:
            raise RuntimeError(
                f"one pass over {len(urls)} shard(s) ({', '.join(urls[:3])}{', ...' if len(urls) > 3 else ''}) "
                f"yielded no batch; skipped {skips.summary()}"
            )


# --------------------------------------------------------------------------------------------------
# DataModule
# --------------------------------------------------------------------------------------------------


def to_model_batch(batch: dict) -> dict:
    """uint8 video -> float32 in [-1, 1] (contiguous (B, 3, F, H, W)); precomputed latents/text -> float32."""
    video = batch.get("video")
    if video is not None and video.dtype == torch.uint8:
        batch["video"] = (video.float() / 127.5 - 1.0).contiguous()
    for name in ("latents", "text"):
        if name in batch:
            batch[name] = batch[name].float()
    return batch


class VideoShardDataModule(L.LightningDataModule):
    """Streams video (or precomputed latent/text) shards in token-balanced single-bucket batches.

    Each DDP rank and DataLoader worker reads its own disjoint shards, cycled forever, and every rank yields exactly
    `batches_per_epoch` training batches. Clips map to the bucket with the nearest aspect ratio that fits (or, with
    `resize`, to the nearest one after an explicit cover-resize); batch size = max(1, tokens_per_batch // tokens).
    Workers hand over uint8 video; `on_after_batch_transfer` makes the float32 [-1, 1] batch on the device.
    Skipped (corrupt, truncated, unknown-member) samples travel as `batch["skipped"]` (count since the worker's
    previous batch; the LightningModule logs it as `data/skipped`) and add up in `self.skipped`.
    Training order, shuffle and crops are a pure function of (`seed`, epoch, rank, worker), and the training loader
    (`ResumableLoader`) saves its position in the epoch in checkpoints: a resumed run gets the batches the
    uninterrupted one would have (`ShardStream` says where that stops). `seed` also numbers the `predict` prompts.
    """

    def __init__(
        self,
        train_shards: str | list[str],
        buckets: list[Bucket],
        tokens_per_batch: int,
        val_shards: str | list[str] | None = None,
        test_shards: str | list[str] | None = None,
        prompts: str | list[str] | None = None,
        batches_per_epoch: int = 1000,
        val_batches: int | None = None,
        test_batches: int | None = None,
        num_workers: int = 2,
        shuffle_buffer: int = 16,
        frame_stride: int = 1,
        fps: float | None = None,
        crop: Literal["random", "center"] = "random",
        resize: bool = False,
        temporal_factor: int = 4,
        spatial_factor: int = 8,
        patch: tuple[int, int, int] = (1, 2, 2),
        use_precomputed: bool = True,
        decode_threads: int = 0,
        predict_batch_size: int = 1,
        seed: int = 0,
    ):
        super().__init__()
        if not buckets:
            raise ValueError("buckets is empty; list at least one {height, width, frames}")
        self.budget = TokenBudget(tokens_per_batch, temporal_factor, spatial_factor, patch)
        self.buckets = [Bucket(**b) if isinstance(b, dict) else b for b in buckets]
        smallest = min(self.buckets, key=self.budget.tokens)
        if self.budget.tokens(smallest) > tokens_per_batch:
            raise ValueError(
                f"tokens_per_batch={tokens_per_batch} is smaller than the smallest bucket {smallest} "
                f"({self.budget.tokens(smallest)} tokens); raise it to at least {self.budget.tokens(smallest)}"
            )
        counts = {"batches_per_epoch": batches_per_epoch, "val_batches": val_batches, "test_batches": test_batches}
        for name, value in counts.items():
            if value is not None and value < 1:
                raise ValueError(f"{name}={value} must be positive (or null for one pass over the shards)")
        if frame_stride < 1:
            raise ValueError(f"frame_stride={frame_stride} must be >= 1")
        if fps is not None and (fps <= 0 or frame_stride != 1):
            raise ValueError(
                f"fps={fps} must be positive and frame_stride left at 1 (got {frame_stride}); use one of them"
            )
        if crop not in ("random", "center"):
            raise ValueError(f"crop={crop!r} must be 'random' or 'center'")
        if num_workers < 0:
            raise ValueError(f"num_workers={num_workers} must be >= 0")
        self.train_shards, self.val_shards, self.test_shards = train_shards, val_shards, test_shards
        self.prompts, self.predict_batch_size, self.seed = prompts, predict_batch_size, seed
        self.batches_per_epoch, self.val_batches, self.test_batches = batches_per_epoch, val_batches, test_batches
        self.num_workers = num_workers
        self.stream_args = dict(
            shuffle_buffer=shuffle_buffer,
            frame_stride=frame_stride,
            fps=fps,
            crop=crop,
            resize=resize,
            use_precomputed=use_precomputed,
            decode_threads=decode_threads,
        )
        self.skipped = 0

    def bucket_table(self) -> list[tuple[Bucket, int, int]]:
        """(bucket, tokens per clip, batch size) of every configured bucket."""
        return [(b, t, self.budget.batch_size(t)) for b in self.buckets for t in [self.budget.tokens(b)]]

    def _loader(self, shards: str | list[str], batches: int | None, train: bool) -> DataLoader:
        urls = expand_shards(shards)
        world_size = wds.utils.pytorch_worker_info()[1]
        if len(urls) < world_size:
            raise ValueError(f"{len(urls)} shards cannot be split over {world_size} ranks; write at least {world_size}")
        workers = min(self.num_workers, len(urls) // world_size)
        if workers < self.num_workers:
            logger.info("%d shards over %d ranks: %d of %d workers", len(urls), world_size, workers, self.num_workers)
        stream = ShardStream(urls, self.buckets, self.budget, batches, train, seed=self.seed, **self.stream_args)
        # Lightning warns about every IterableDataset with __len__ (a length could be counted once per worker).
        # ShardStream's is exact (`worker_share` splits it over the workers): only this message is silenced, here
        # rather than at import, so that it holds inside any `warnings.catch_warnings` block the loader is built in.
        warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined", category=UserWarning)
        if train:
            epoch = partial(trainer_epoch, self)
            return ResumableLoader(stream, seed=self.seed, epoch=epoch, batch_size=None, num_workers=workers)
        return DataLoader(stream, batch_size=None, num_workers=workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_shards, self.batches_per_epoch, train=True)

    def val_dataloader(self) -> DataLoader | list:
        return [] if self.val_shards is None else self._loader(self.val_shards, self.val_batches, train=False)

    def test_dataloader(self) -> DataLoader | list:
        return [] if self.test_shards is None else self._loader(self.test_shards, self.test_batches, train=False)

    def predict_dataloader(self) -> DataLoader:
        if self.prompts is None:
            raise ValueError("predict needs prompts: set data.init_args.prompts to a prompt list or a text file")
        from ultragen.data.prompts import PromptDataset

        return DataLoader(PromptDataset(self.prompts, self.seed), batch_size=self.predict_batch_size)

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        if isinstance(batch, dict) and "skipped" in batch:
            self.skipped += int(batch["skipped"])  # on the host, before the transfer: no device sync
        return batch

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        return to_model_batch(batch) if isinstance(batch, dict) else batch
