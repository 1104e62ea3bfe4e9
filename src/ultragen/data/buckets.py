"""Resolution/length buckets with a latent-token budget per batch, and the single-bucket batching stage."""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from ultragen.data.video import check_clip_shape


@dataclass(frozen=True)
class Bucket:
    """One training shape in pixels: height, width, frames."""

    height: int
    width: int
    frames: int

    def __post_init__(self):
        for name in ("height", "width", "frames"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"bucket {name}={value!r} must be a positive integer")

    @property
    def aspect(self) -> float:
        return self.width / self.height

    def __str__(self) -> str:
        return f"{self.height}x{self.width}x{self.frames}"


def nearest_bucket(
    buckets: Sequence[Bucket], height: int, width: int, frames: int | None = None, fit: bool = False
) -> Bucket:
    """Bucket with the nearest aspect ratio (log scale) among those with at most `frames` frames.

    fit=True also requires the bucket to fit inside height × width (crop without resizing).
    Ties go to more frames, then to the larger area.
    """
    candidates = [
        b
        for b in buckets
        if (frames is None or b.frames <= frames) and (not fit or (b.height <= height and b.width <= width))
    ]
    if not candidates:
        hint = "add a smaller bucket" + (" or enable resize" if fit else "")
        shape = f"{height}x{width}" + (f"x{frames}" if frames is not None else "")
        raise ValueError(f"no bucket fits a {shape} clip among [{', '.join(map(str, buckets))}]; {hint}")
    target = math.log(width / height)
    return min(candidates, key=lambda b: (abs(math.log(b.aspect) - target), -b.frames, -b.height * b.width))


class TokenBudget:
    """Batch size per bucket so that each batch holds about tokens_per_batch latent tokens.

    tokens = (T / pt) · (H / (sf·ph)) · (W / (sf·pw)) with T = (F − 1) / tf + 1 (Wan: tf=4, sf=8, patch 1×2×2).
    """

    def __init__(
        self,
        tokens_per_batch: int,
        temporal_factor: int = 4,
        spatial_factor: int = 8,
        patch: tuple[int, int, int] = (1, 2, 2),
    ):
        if tokens_per_batch < 1:
            raise ValueError(f"tokens_per_batch={tokens_per_batch} must be positive")
        if len(patch) != 3 or min(patch) < 1:
            raise ValueError(f"patch={patch} must be three positive integers (t, h, w)")
        if patch[1] != patch[2]:
            raise ValueError(f"patch={patch} must have equal height and width sizes")
        self.tokens_per_batch = tokens_per_batch
        self.temporal_factor = temporal_factor
        self.spatial_factor = spatial_factor
        self.patch = tuple(patch)

    def grid_tokens(self, t: int, h: int, w: int) -> int:
        """Tokens of a latent grid (T, h, w) after patchify."""
        for name, size, p in zip(("latent frames", "latent height", "latent width"), (t, h, w), self.patch):
            if size % p:
                raise ValueError(f"{name}={size} is not divisible by the patch size {p}")
        return (t // self.patch[0]) * (h // self.patch[1]) * (w // self.patch[2])

    def tokens(self, bucket: Bucket) -> int:
        """Tokens of one clip of this bucket; raises naming the bad value unless it maps to a whole token grid."""
        tf, sf = self.temporal_factor, self.spatial_factor
        check_clip_shape(bucket.frames, bucket.height, bucket.width, tf, sf * self.patch[1])
        return self.grid_tokens((bucket.frames - 1) // tf + 1, bucket.height // sf, bucket.width // sf)

    def batch_size(self, tokens: int) -> int:
        """max(1, tokens_per_batch // tokens)."""
        return max(1, self.tokens_per_batch // tokens)

    def __repr__(self) -> str:
        return (
            f"TokenBudget(tokens_per_batch={self.tokens_per_batch}, temporal_factor={self.temporal_factor}, "
            f"spatial_factor={self.spatial_factor}, patch={self.patch})"
        )


def bucket_batches(
    samples: Iterable[dict], budget: TokenBudget, partial: bool = False
) -> Iterator[list[dict]]:
    """Group samples carrying "__bucket__" (hashable) and "__tokens__" into single-bucket lists of budgeted size.

    A list is yielded as soon as its bucket holds batch_size(tokens) samples; partial=True flushes the rest at the end.
    """
    pending: dict[Hashable, list[dict]] = {}
    for sample in samples:
        group = pending.setdefault(sample["__bucket__"], [])
        group.append(sample)
        if len(group) >= budget.batch_size(sample["__tokens__"]):
            yield pending.pop(sample["__bucket__"])
    if partial:
        yield from pending.values()
