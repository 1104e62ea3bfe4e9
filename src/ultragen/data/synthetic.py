"""Procedural moving-shape videos with captions: data for `fit` that needs no files."""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ultragen.data.prompts import PromptDataset

COLORS = {
    "red": (0.9, 0.1, 0.1),
    "green": (0.1, 0.8, 0.2),
    "blue": (0.15, 0.3, 0.95),
    "yellow": (0.95, 0.85, 0.1),
    "white": (0.95, 0.95, 0.95),
    "purple": (0.6, 0.2, 0.8),
}
BACKGROUNDS = {"black": (0.05, 0.05, 0.05), "grey": (0.45, 0.45, 0.45), "navy": (0.05, 0.08, 0.3)}
SHAPES = ("circle", "square")
DIRECTIONS = {"left to right": (-1.0, 0.0, 1.0, 0.0), "right to left": (1.0, 0.0, -1.0, 0.0),
              "top to bottom": (0.0, -1.0, 0.0, 1.0), "bottom to top": (0.0, 1.0, 0.0, -1.0)}


def render_clip(index: int, frames: int, height: int, width: int, seed: int = 0) -> tuple[Tensor, str]:
    """One clip (3, F, H, W) in [-1, 1] of a large shape crossing the frame, and its caption."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + index)
    pick = lambda seq: seq[int(torch.randint(len(seq), (1,), generator=g))]  # noqa: E731
    color, bg, shape, direction = pick(list(COLORS)), pick(list(BACKGROUNDS)), pick(SHAPES), pick(list(DIRECTIONS))
    x0, y0, x1, y1 = DIRECTIONS[direction]
    radius = 0.25 + 0.15 * float(torch.rand((), generator=g))  # fraction of the short side: objects are large
    ys = torch.linspace(-1, 1, height)[:, None].expand(height, width)
    xs = torch.linspace(-1, 1, width)[None, :].expand(height, width)
    aspect = width / height
    video = torch.empty(3, frames, height, width)
    bg_t = torch.tensor(BACKGROUNDS[bg])[:, None, None]
    fg_t = torch.tensor(COLORS[color])[:, None, None]
    for f in range(frames):
        a = f / max(frames - 1, 1)
        cx, cy = (x0 + (x1 - x0) * a) * 0.7, (y0 + (y1 - y0) * a) * 0.7
        dx, dy = (xs - cx) * aspect, ys - cy
        inside = (dx**2 + dy**2 <= radius**2) if shape == "circle" else (dx.abs().maximum(dy.abs()) <= radius)
        video[:, f] = torch.where(inside, fg_t, bg_t)
    return video * 2 - 1, f"a large {color} {shape} moving {direction} on a {bg} background"


class SyntheticVideoDataset(Dataset):
    """`length` deterministic clips; item i is the same on every call and every rank."""

    def __init__(self, length: int, frames: int, height: int, width: int, seed: int):
        self.length, self.frames, self.height, self.width, self.seed = length, frames, height, width, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        video, caption = render_clip(i, self.frames, self.height, self.width, self.seed)
        return {"video": video, "caption": caption, "key": f"synthetic_{self.seed}_{i:06d}"}


class SyntheticVideoDataModule(L.LightningDataModule):
    """Moving shapes at any resolution/length, with captions; `prompts` feeds `predict`."""

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
        prompts: str | list[str] | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        h = self.hparams
        return DataLoader(dataset, batch_size=h.batch_size, shuffle=shuffle, num_workers=h.num_workers,
                          persistent_workers=h.num_workers > 0)

    def _clips(self, size: int, seed: int) -> SyntheticVideoDataset:
        h = self.hparams
        return SyntheticVideoDataset(size, h.frames, h.height, h.width, seed)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self._clips(self.hparams.train_size, self.hparams.seed), shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._clips(self.hparams.val_size, self.hparams.seed + 1), shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._clips(self.hparams.val_size, self.hparams.seed + 2), shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        if self.hparams.prompts is None:
            raise ValueError("predict needs prompts: pass --data.prompts prompts.txt (one prompt per line)")
        return DataLoader(PromptDataset(self.hparams.prompts, self.hparams.seed), batch_size=1)
