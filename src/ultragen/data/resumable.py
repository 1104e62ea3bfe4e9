"""Data position in checkpoints: a training DataLoader that resumes mid-epoch and a sampler whose order is pure.

A killed run restarted from a checkpoint must see the batches the uninterrupted run would have seen. The order of
an epoch is a pure function of (seed, epoch) (and of rank and worker, for shard streams), never a draw from the
global RNG, which a restart cannot replay; so the state to save is the position: the epoch, the batches delivered
in it and, for streams, the batch plans each worker used (`POSITION`).

Exact with any number of DataLoader workers, with skipped corrupt samples and undecodable (even whole) batches,
and when a run is resumed twice in one epoch. Not exact when the setup changes between kill and resume (world
size, a stream's `num_workers` (warned), batch size or buckets, the data), nor for a loader without a length:
Lightning fetches one batch ahead from those, so the saved count would be one batch too far.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator, Sized
from typing import Any, Protocol, runtime_checkable

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset

log = logging.getLogger(__name__)


def mix_seed(*parts: int) -> int:
    """One 63-bit seed from several non-negative integers (numpy's SeedSequence hashing: no collisions like a+b)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0] >> np.uint64(1))


def trainer_epoch(datamodule: L.LightningDataModule) -> int:
    """The current epoch of the DataModule's trainer (0 without one)."""
    return 0 if datamodule.trainer is None else datamodule.trainer.current_epoch


@runtime_checkable
class Positioned(Protocol):
    """An order source (sampler, or iterable dataset) that can start pass `epoch` at item `start` without replaying
    the items before it through the loader. `consumed` maps a worker's part to the source items it used up to its
    last delivered batch, for sources whose batches can use more than one item each (`POSITION` marks)."""

    def set_position(self, epoch: int, start: int, consumed: dict[int, int]) -> None: ...


# A batch dict may carry (part, items used so far) under this key; ResumableLoader removes it and saves it.
POSITION = "__position__"


class ResumableSampler(DistributedSampler):
    """torch's DistributedSampler (shuffled; the order is a pure function of seed + epoch; this rank's share under
    DDP, where Lightning keeps it instead of injecting its own) that can start `start` samples into the epoch."""

    def __init__(self, dataset: Sized, seed: int):
        distributed = dist.is_available() and dist.is_initialized()
        super().__init__(dataset, num_replicas=None if distributed else 1, rank=None if distributed else 0,
                         shuffle=True, seed=seed)
        self.start = 0

    def set_position(self, epoch: int, start: int, consumed: dict[int, int]) -> None:
        self.set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.start, None)


class ResumableLoader(DataLoader):
    """Training DataLoader with Lightning's stateful-loader protocol (`state_dict` / `load_state_dict`).

    Checkpoints record the epoch, the batches delivered in it and the `POSITION` marks of the last batch of each
    worker part; the first pass after `load_state_dict` starts there, every other pass starts epoch `epoch()` (the
    trainer's current epoch) at its beginning. The order source (the sampler of a map-style dataset, the dataset
    itself when it is iterable) must be `Positioned`; `seed` fixes the worker base seed of each epoch instead of a
    draw from the global torch RNG. Needs a length (see the module docstring).
    """

    def __init__(self, *args: Any, seed: int, epoch: Callable[[], int], **kwargs: Any):
        super().__init__(*args, **kwargs)
        source = self.dataset if isinstance(self.dataset, IterableDataset) else self.sampler
        if not isinstance(source, Positioned):
            raise TypeError(f"{type(source).__name__} has no set_position(epoch, start, consumed) to resume from")
        if isinstance(self.dataset, IterableDataset) and self.persistent_workers:
            raise ValueError("persistent_workers would keep an iterable dataset at its first position; turn it off")
        self.source, self.seed, self.epoch = source, seed, epoch
        self.position: dict[str, Any] = {"epoch": 0, "batches": 0, "consumed": {}}
        self.resume_at: dict[str, Any] | None = None

    def __iter__(self) -> Iterator[Any]:
        at, self.resume_at, epoch = self.resume_at, None, self.epoch()
        if at is not None and at["epoch"] >= epoch and at["batches"] < len(self):  # resume mid-epoch
            epoch, start, consumed = at["epoch"], at["batches"], at["consumed"]
            if isinstance(self.dataset, IterableDataset) and at["workers"] != self.num_workers:
                log.warning("a stream saved with %d workers resumes with %d: the workers' parts of the epoch change, "
                            "so its rest differs from the interrupted run's", at["workers"], self.num_workers)
        else:  # a new epoch; a checkpoint may have ended the previous one (also one cut by limit_train_batches)
            epoch, start, consumed = (epoch if at is None else max(epoch, at["epoch"] + 1)), 0, {}
        self.source.set_position(epoch, start * (self.batch_size or 1), consumed)
        self.generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch))  # worker base seeds
        self.position = {"epoch": epoch, "batches": start, "consumed": dict(consumed)}
        for batch in super().__iter__():
            self.position["batches"] += 1
            if isinstance(batch, dict) and POSITION in batch:
                part, used = batch.pop(POSITION)
                self.position["consumed"][part] = used
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return {**self.position, "consumed": dict(self.position["consumed"]), "workers": self.num_workers}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.resume_at = {"consumed": {}, "workers": self.num_workers, **state}
