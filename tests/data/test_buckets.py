"""Token-balanced buckets: token counts, batch sizes, aspect mapping, single-bucket batching."""

import random

import pytest

from ultragen.data.buckets import Bucket, TokenBudget, bucket_batches, nearest_bucket

BUCKETS = [Bucket(1088, 1920, 81), Bucket(1920, 1088, 81), Bucket(1440, 1440, 81), Bucket(544, 960, 81), Bucket(1088, 1920, 29)]


def test_tokens_follow_the_wan_grid():
    budget = TokenBudget(tokens_per_batch=171_360)
    assert budget.tokens(Bucket(1088, 1920, 81)) == 21 * 68 * 120  # METHOD.md 3.1 grid of the 1080P preset
    assert budget.tokens(Bucket(2176, 3840, 81)) == 21 * 136 * 240
    assert budget.batch_size(budget.tokens(Bucket(544, 960, 81))) == 4
    assert budget.batch_size(10**9) == 1  # over budget: still one clip
    pixel = TokenBudget(6144, temporal_factor=4, spatial_factor=4)
    assert pixel.tokens(Bucket(272, 480, 9)) == 3 * 34 * 60


@pytest.mark.parametrize(
    "bucket, match",
    [(Bucket(1080, 1920, 81), r"height=1080 .* multiple of 16"), (Bucket(1088, 1920, 80), r"frames=80 must be 4k\+1")],
)
def test_bad_buckets_are_rejected_with_the_fix(bucket, match):
    with pytest.raises(ValueError, match=match):
        TokenBudget(1000).tokens(bucket)


def test_budget_and_bucket_validation():
    with pytest.raises(ValueError, match="tokens_per_batch=0"):
        TokenBudget(0)
    with pytest.raises(ValueError, match="latent frames=3 is not divisible by the patch size 2"):
        TokenBudget(1000, patch=(2, 2, 2)).tokens(Bucket(64, 64, 9))
    with pytest.raises(ValueError, match="height=0"):
        Bucket(0, 64, 9)


def test_aspect_ratio_maps_to_nearest_bucket():
    assert nearest_bucket(BUCKETS, 720, 1280) == Bucket(1088, 1920, 81)  # 16:9 -> landscape, most frames
    assert nearest_bucket(BUCKETS, 1280, 720) == Bucket(1920, 1088, 81)  # 9:16 -> portrait
    assert nearest_bucket(BUCKETS, 1000, 1100) == Bucket(1440, 1440, 81)  # near square
    assert nearest_bucket(BUCKETS, 272, 640) == Bucket(1088, 1920, 81)  # 2.35:1 -> widest
    assert nearest_bucket(BUCKETS, 1080, 1920, frames=40) == Bucket(1088, 1920, 29)  # too short for 81 frames
    assert nearest_bucket(BUCKETS, 1080, 1920, frames=81, fit=True) == Bucket(544, 960, 81)  # 1088 rows do not fit
    with pytest.raises(ValueError, match="no bucket fits a 100x100x81 clip .* or enable resize"):
        nearest_bucket(BUCKETS, 100, 100, frames=81, fit=True)


def test_every_batch_is_single_bucket_and_within_budget():
    budget = TokenBudget(tokens_per_batch=700_000)
    rng = random.Random(0)
    samples = []
    for i in range(400):
        b = rng.choice(BUCKETS)
        samples.append({"id": i, "__bucket__": b, "__tokens__": budget.tokens(b)})
    batches = list(bucket_batches(iter(samples), budget, partial=True))
    assert sorted(s["id"] for batch in batches for s in batch) == list(range(400))
    full = list(bucket_batches(iter(samples), budget))
    for batch in full:
        assert len({s["__bucket__"] for s in batch}) == 1
        tokens = batch[0]["__tokens__"]
        assert len(batch) == budget.batch_size(tokens) and len(batch) * tokens <= budget.tokens_per_batch
    per_batch = [len(b) * b[0]["__tokens__"] for b in full]
    assert min(per_batch) >= 0.6 * budget.tokens_per_batch  # roughly equal tokens per step across buckets
