"""SyntheticVideoDataModule: procedural moving-object clips with captions and ground truth, rendered on the fly."""

from __future__ import annotations

from functools import partial

import lightning as L
from torch.utils.data import DataLoader, Dataset

from ultragen.data.procedural import Mode, random_scene, render, to_tensor
from ultragen.data.prompts import PromptDataset
from ultragen.data.resumable import ResumableLoader, ResumableSampler, trainer_epoch


class SyntheticVideoDataset(Dataset):
    """`length` deterministic clips of the scene set `seed`; item i is the same on every call and every rank."""

    def __init__(self, length: int, frames: int, height: int, width: int, seed: int,
                 counts: tuple[int, ...] = (1,), mode: Mode = "objects"):
        self.length, self.frames, self.height, self.width, self.seed = length, frames, height, width, seed
        self.counts, self.mode = tuple(counts), mode

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        """video (3, F, H, W) in [-1, 1], caption, key and the ground truth as json (`Truth.from_json`)."""
        scene = random_scene(i, self.seed, self.counts, self.mode)
        return {
            "video": to_tensor(render(scene, self.frames, self.height, self.width)),
            "caption": scene.caption(),
            "key": f"synthetic_{self.seed}_{i:06d}",
            "truth": scene.truth(self.frames, self.height, self.width).to_json(),
        }


class SyntheticVideoDataModule(L.LightningDataModule):
    """Procedural scenes (`ultragen.data.procedural`) at any resolution/length; `prompts` feeds `predict`.

    Train, validation and test clips come from the scene sets `seed`, `seed + 1` and `seed + 2`. The training order
    is a pure function of (`seed`, epoch) and checkpoints hold the position in the epoch (`ResumableLoader`), so a
    resumed run sees the clips the uninterrupted one would have, with any number of workers.
    """

    def __init__(
        self,
        frames: int = 17,
        height: int = 64,
        width: int = 64,
        train_size: int = 256,
        val_size: int = 8,
        batch_size: int = 2,
        num_workers: int = 0,
        seed: int = 0,
        counts: list[int] | None = None,
        mode: Mode = "objects",
        prompts: str | list[str] | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()

    def _loader(self, dataset: Dataset) -> DataLoader:
        h = self.hparams
        return DataLoader(dataset, batch_size=h.batch_size, num_workers=h.num_workers,
                          persistent_workers=h.num_workers > 0)

    def _clips(self, size: int, seed: int) -> SyntheticVideoDataset:
        h = self.hparams
        return SyntheticVideoDataset(size, h.frames, h.height, h.width, seed, tuple(h.counts or (1,)), h.mode)

    def train_dataloader(self) -> DataLoader:
        h = self.hparams
        clips = self._clips(h.train_size, h.seed)
        return ResumableLoader(clips, seed=h.seed, epoch=partial(trainer_epoch, self),
                               sampler=ResumableSampler(clips, h.seed), batch_size=h.batch_size,
                               num_workers=h.num_workers, persistent_workers=h.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._clips(self.hparams.val_size, self.hparams.seed + 1))

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._clips(self.hparams.val_size, self.hparams.seed + 2))

    def predict_dataloader(self) -> DataLoader:
        if self.hparams.prompts is None:
            raise ValueError("predict needs prompts: pass --data.prompts prompts.txt (one prompt per line)")
        return DataLoader(PromptDataset(self.hparams.prompts, self.hparams.seed), batch_size=1)
