"""Prompt lists for `predict`: one sample per prompt with a stable key and seed, and optionally a first frame."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

log = logging.getLogger(__name__)


def read_prompt_entries(prompts: str | list[str]) -> list[tuple[str, str | None]]:
    """(prompt, image path or None) per prompt: a list of prompts, the non-empty lines of a .txt file, or the lines
    of a .jsonl file of {"prompt": ..., "image": optional path, relative to the file} (image-to-video)."""
    entries: list[tuple[str, str | None]]
    if isinstance(prompts, str):
        path = Path(prompts)
        if not path.is_file():
            raise FileNotFoundError(
                f"prompts file {prompts!r} not found; pass a .txt (one prompt per line) or .jsonl path, or a list"
            )
        lines = [(n, line.strip()) for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)]
        if path.suffix == ".jsonl":
            entries = [jsonl_entry(path, n, line) for n, line in lines if line]
        else:
            entries = [(line, None) for _, line in lines]
    else:
        entries = [(p.strip(), None) for p in prompts]
    entries = [(p, image) for p, image in entries if p]
    if not entries:
        raise ValueError("no prompts given: the list or file is empty")
    return entries


def jsonl_entry(path: Path, number: int, line: str) -> tuple[str, str | None]:
    """One {"prompt", "image"?} line of a prompts .jsonl; errors name file:line."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exn:
        raise ValueError(f"{path}:{number}: not JSON ({exn.msg}); write one {{\"prompt\": ...}} object per line") from None
    if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
        raise ValueError(f'{path}:{number}: needs a "prompt" string, e.g. {{"prompt": "a red ball", "image": "ball.png"}}')
    image = record.get("image")
    if image is None:
        return record["prompt"], None
    image_path = (path.parent / image).resolve()
    if not image_path.is_file():
        raise FileNotFoundError(f"{path}:{number}: image {image!r} not found (paths are relative to {path.parent})")
    return record["prompt"], str(image_path)


def fit_image(image: Tensor, height: int, width: int) -> Tensor:
    """(B, 3, h, w) uint8 -> (B, 3, height, width) in [-1, 1]: resized to cover the size (aspect kept), centre-cropped.
    Logged when the size changes."""
    from torchvision.transforms.functional import center_crop, resize

    h, w = image.shape[-2:]
    if (h, w) != (height, width):
        scale = max(height / h, width / w)
        cover = [max(height, round(h * scale)), max(width, round(w * scale))]
        log.info("first frame %dx%d resized to cover %dx%d, then centre-cropped to %dx%d", h, w, *cover, height, width)
        image = center_crop(resize(image, cover, antialias=True), [height, width])
    return image.float() / 127.5 - 1


def prompt_key(index: int, prompt: str) -> str:
    """File-system safe key, e.g. '00003_a_red_ball_rolls'."""
    slug = re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")[:48]
    return f"{index:05d}_{slug}"


class PromptDataset(Dataset):
    """Items {'prompt', 'key', 'seed'} and, for a prompt with an image, 'first_frame' (3, H, W) uint8; seed = base
    seed + index so each video is reproducible on its own."""

    def __init__(self, prompts: str | list[str], seed: int = 0):
        self.entries = read_prompt_entries(prompts)
        self.prompts = [prompt for prompt, _ in self.entries]
        self.seed = seed

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, i: int) -> dict:
        prompt, image = self.entries[i]
        item = {"prompt": prompt, "key": prompt_key(i, prompt), "seed": torch.tensor(self.seed + i)}
        if image is not None:
            from torchvision.io import ImageReadMode, decode_image

            item["first_frame"] = decode_image(image, mode=ImageReadMode.RGB)
        return item


class PromptDataModule(L.LightningDataModule):
    """Predict-only data: `ultragen predict ... --data.init_args.prompts prompts.txt`."""

    def __init__(self, prompts: str | list[str], seed: int = 0, batch_size: int = 1):
        super().__init__()
        self.prompts, self.seed, self.batch_size = prompts, seed, batch_size

    def predict_dataloader(self) -> DataLoader:
        dataset = PromptDataset(self.prompts, self.seed)
        if self.batch_size > 1 and any(image is not None for _, image in dataset.entries):
            raise ValueError(
                f"batch_size={self.batch_size} with image-to-video prompts: their images differ in size and a batch "
                "cannot mix them with text-only prompts; set data.init_args.batch_size: 1"
            )
        return DataLoader(dataset, batch_size=self.batch_size)
