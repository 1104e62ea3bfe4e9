"""Prompt lists for `predict`: one sample per prompt with a stable key and seed."""

from __future__ import annotations

import re
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset


def read_prompts(prompts: str | list[str]) -> list[str]:
    """A list of prompts as given, or the non-empty lines of a text file."""
    if isinstance(prompts, str):
        path = Path(prompts)
        if not path.is_file():
            raise FileNotFoundError(f"prompts file {prompts!r} not found; pass a .txt path (one prompt per line) or a list")
        prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    prompts = [p for p in prompts if p]
    if not prompts:
        raise ValueError("no prompts given: the list or file is empty")
    return prompts


def prompt_key(index: int, prompt: str) -> str:
    """File-system safe key, e.g. '00003_a_red_ball_rolls'."""
    slug = re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")[:48]
    return f"{index:05d}_{slug}"


class PromptDataset(Dataset):
    """Items {'prompt', 'key', 'seed'}; seed = base seed + index so each video is reproducible on its own."""

    def __init__(self, prompts: str | list[str], seed: int = 0):
        self.prompts = read_prompts(prompts)
        self.seed = seed

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, i: int) -> dict:
        return {"prompt": self.prompts[i], "key": prompt_key(i, self.prompts[i]), "seed": torch.tensor(self.seed + i)}


class PromptDataModule(L.LightningDataModule):
    """Predict-only data: `ultragen predict ... --data.init_args.prompts prompts.txt`."""

    def __init__(self, prompts: str | list[str], seed: int = 0, batch_size: int = 1):
        super().__init__()
        self.prompts, self.seed, self.batch_size = prompts, seed, batch_size

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(PromptDataset(self.prompts, self.seed), batch_size=self.batch_size)
