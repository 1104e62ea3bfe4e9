"""The procedural generator: captions state what is drawn, scenes are large and deterministic, data modules carry
the ground truth."""

import dataclasses

import numpy as np
import pytest

from ultragen.data.procedural import COUNT_WORDS, DIRECTIONS, PALETTE, SHAPES, Truth, random_scene, render
from ultragen.data.synthetic import SyntheticVideoDataModule
from ultragen.eval.objects import color_mask


def test_caption_states_count_colour_shape_direction_and_background():
    scene = dataclasses.replace(random_scene(0), color="red", shape="square", direction="upwards", background="grey",
                                lanes=(0.3, 0.7))
    assert scene.caption() == "two large red squares moving upwards on a grey background"


def test_scenes_are_deterministic_and_cover_the_vocabulary():
    scenes = [random_scene(i, seed=3, counts=(1, 2, 3)) for i in range(300)]
    assert scenes[:5] == [random_scene(i, seed=3, counts=(1, 2, 3)) for i in range(5)]
    assert scenes[:5] != [random_scene(i, seed=4, counts=(1, 2, 3)) for i in range(5)]
    assert {s.color for s in scenes} == set(PALETTE) and {s.shape for s in scenes} == set(SHAPES)
    assert {s.direction for s in scenes} == set(DIRECTIONS) and {s.count for s in scenes} == {1, 2, 3}
    assert all(COUNT_WORDS[s.count] in s.caption() for s in scenes)


@pytest.mark.parametrize("mode, low, high", [("objects", 0.08, 0.25), ("global", 0.28, 0.6)])
def test_objects_are_large_and_global_objects_span_most_of_the_frame(mode, low, high):
    for i in range(20):
        scene = random_scene(i, mode=mode)
        area = color_mask(render(scene, 5, 64, 64), scene.color).mean(axis=(1, 2))  # fraction of each frame
        assert (low < area).all() and (area < high).all(), (mode, scene, area)
        # diameter in 16-pixel windows (4x4 windows on 64 pixels): over 1 always touches 2+ windows per axis
        span = 2 * scene.radius * 64 / 16
        assert span > (1.4 if mode == "objects" else 2.4)


def test_objects_cross_the_frame_in_the_stated_direction():
    scene = dataclasses.replace(random_scene(1), direction="leftwards", start=0.75, end=0.25)
    truth = scene.truth(9, 48, 80)
    xs = [c[0][1] for c in truth.centroids]
    assert xs[0] == pytest.approx(0.75) and xs[-1] == pytest.approx(0.25) and xs == sorted(xs, reverse=True)
    assert Truth.from_json(truth.to_json()) == truth


def test_a_scene_that_leaves_the_frame_is_refused():
    scene = dataclasses.replace(random_scene(0), start=0.05, end=0.5)
    with pytest.raises(ValueError, match="leaves the 64x64 frame"):
        render(scene, 5, 64, 64)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="mode='huge'"):
        random_scene(0, mode="huge")
    with pytest.raises(ValueError, match=r"counts=\[0\]"):
        random_scene(0, counts=(0,))


def test_synthetic_datamodule_returns_video_caption_and_matching_truth():
    dm = SyntheticVideoDataModule(frames=5, height=48, width=64, train_size=4, val_size=2, batch_size=2, counts=[2])
    batch = next(iter(dm.val_dataloader()))
    assert batch["video"].shape == (2, 3, 5, 48, 64) and batch["video"].min() >= -1
    for video, caption, truth in zip(batch["video"], batch["caption"], batch["truth"]):
        truth = Truth.from_json(truth)
        assert truth.count == 2 and caption.startswith(f"two large {truth.color} {truth.shape}s moving {truth.direction}")
        frames = ((video + 1) * 127.5).round().byte().permute(1, 2, 3, 0).numpy()
        ys, xs = np.nonzero(color_mask(frames, truth.color)[0])
        mean = np.mean(truth.centroids[0], axis=0)
        assert abs((ys.mean() + 0.5) / 48 - mean[0]) < 0.02 and abs((xs.mean() + 0.5) / 64 - mean[1]) < 0.02
