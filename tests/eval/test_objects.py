"""Procedural-clip metrics: exact on rendered ground truth for every colour, shape, direction and count, analytic
values on synthetic masks, and the failures each metric must report."""

import dataclasses
import itertools

import numpy as np
import pytest
import torch
from scipy import ndimage

from ultragen.data.procedural import BACKGROUNDS, DIRECTIONS, PALETTE, SHAPES, Scene, Truth, random_scene, render
from ultragen.data.video import decode_frames, encode_h264
from ultragen.eval import (
    as_frames,
    centroid_track,
    color_mask,
    count_objects,
    dominant_color,
    motion_direction,
    score_sample,
    score_samples,
    trajectory_error,
)

FRAMES = 9
SIZES = [(64, 64), (48, 80)]
OPPOSITE = {"rightwards": "leftwards", "leftwards": "rightwards", "downwards": "upwards", "upwards": "downwards"}


def base_scenes() -> dict[tuple[str, int], Scene]:
    """The first scene of set 0 for each (direction, count in 1..3)."""
    scenes, index = {}, 0
    while len(scenes) < len(DIRECTIONS) * 3:
        for count in (1, 2, 3):
            scene = random_scene(index, 0, (count,))
            scenes.setdefault((scene.direction, scene.count), scene)
        index += 1
    return scenes


BASES = base_scenes()
BACKGROUND_NAMES = list(BACKGROUNDS)


def scenes_of(color: str) -> list[Scene]:
    """Every shape x direction x count in `color`, cycling through the backgrounds."""
    combos = itertools.product(SHAPES, BASES.values())
    return [
        dataclasses.replace(base, color=color, shape=shape, background=BACKGROUND_NAMES[i % len(BACKGROUND_NAMES)])
        for i, (shape, base) in enumerate(combos)
    ]


def background_video(name: str, frames: int, height: int, width: int) -> np.ndarray:
    """(F, H, W, 3) uint8 of the background gradient alone."""
    top, bottom = (np.array(c, np.float32) for c in BACKGROUNDS[name])
    ramp = ((np.arange(height, dtype=np.float32) + 0.5) / height)[:, None, None]
    image = np.broadcast_to(top * (1 - ramp) + bottom * ramp, (height, width, 3))
    return np.repeat(np.round(image).astype(np.uint8)[None], frames, axis=0)


def paint(video: np.ndarray, color: str, frame: int, rows: slice, cols: slice) -> np.ndarray:
    """Fill a rectangle of one frame with a palette colour, in place; returns the video."""
    video[frame, rows, cols] = PALETTE[color]
    return video


#################################################################################
#                            Exact on the ground truth                          #
#################################################################################


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("color", list(PALETTE))
def test_every_scene_scores_perfectly_against_its_truth(color, size):
    for scene in scenes_of(color):
        scores = score_sample(render(scene, FRAMES, *size), scene.truth(FRAMES, *size))
        assert scores["color_correct"] == 1, scene
        assert scores["count_error"] == 0, scene
        assert scores["direction_correct"] == 1, scene
        # rasterisation: a binary mask places each object within 0.5 px per axis, and objects of unequal pixel
        # area pull the mask centroid of several objects a little further
        assert scores["trajectory_error"] < 1 / min(size), scene


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_global_scenes_score_perfectly(size):
    for index in range(12):
        scene = random_scene(index, 0, mode="global")
        scores = score_sample(render(scene, FRAMES, *size), scene.truth(FRAMES, *size))
        assert scores == {**scores, "color_correct": 1, "count_error": 0, "direction_correct": 1}, scene
        assert scores["trajectory_error"] < 0.5 / min(size), scene


def test_scores_survive_h264():
    """yuv420 at crf 28: chroma blur at edges stays within the colour tolerance and leaves no counted sliver."""
    scenes = [
        Scene("green", "square", "upwards", "grey", 0.1845, (0.26, 0.76), 0.7285, 0.2685),  # detached a sliver
        *(dataclasses.replace(BASES[("leftwards", 3)], color=c, background="brown") for c in PALETTE),
        random_scene(0, 1, mode="global"),
    ]
    for scene in scenes:
        video = render(scene, FRAMES, 64, 64)
        decoded = decode_frames(encode_h264(video, 8, crf=28), list(range(FRAMES)), np.empty_like(video))
        scores = score_sample(decoded, scene.truth(FRAMES, 64, 64))
        assert scores == {**scores, "color_correct": 1, "count_error": 0, "direction_correct": 1}, scene
        assert scores["trajectory_error"] < 2 / 64, scene


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_truth_round_trips_and_matches_the_rendered_frames(size):
    h, w = size
    for scene in scenes_of("magenta") + scenes_of("yellow"):
        truth = scene.truth(FRAMES, h, w)
        assert Truth.from_json(truth.to_json()) == truth
        assert Truth.from_json(dataclasses.asdict(truth)) == truth
        mask = color_mask(render(scene, FRAMES, h, w), scene.color)
        for f in range(FRAMES):
            labels, n = ndimage.label(mask[f], structure=np.ones((3, 3)))
            assert n == truth.count, scene
            boxes = np.array([(s[0].start, s[1].start, s[0].stop, s[1].stop) for s in ndimage.find_objects(labels)])
            centres = np.array(ndimage.center_of_mass(mask[f], labels, range(1, n + 1))) + 0.5
            expected = np.array(truth.centroids[f]) * [h, w]
            match = np.linalg.norm(expected[:, None] - centres[None], axis=-1).argmin(1)  # truth object -> label
            assert sorted(match) == list(range(n))
            # half a pixel per axis, plus a little: the gradient changes the edge threshold from top to bottom
            np.testing.assert_array_less(np.abs(centres[match] - expected), 0.55)
            np.testing.assert_array_less(np.abs(boxes[match] - np.array(truth.boxes[f]) * [h, w, h, w]), 1 + 1e-9)


#################################################################################
#                                  Failures                                     #
#################################################################################


def test_wrong_colour_is_reported():
    scene = BASES[("rightwards", 2)]
    truth = dataclasses.replace(scene, color="blue").truth(FRAMES, 64, 64)
    scores = score_sample(render(dataclasses.replace(scene, color="red"), FRAMES, 64, 64), truth)
    assert scores == {"color_correct": 0, "count_error": 2, "direction_correct": 0, "trajectory_error": 1.0}


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_reversed_video_has_the_opposite_direction(direction):
    scene = BASES[(direction, 1)]
    video = render(scene, FRAMES, 48, 80)
    assert motion_direction(centroid_track(video[::-1], scene.color)) == OPPOSITE[direction]
    assert score_sample(video[::-1], scene.truth(FRAMES, 48, 80))["direction_correct"] == 0


def test_extra_object_is_counted():
    two = BASES[("downwards", 2)]
    one = dataclasses.replace(two, lanes=two.lanes[:1])
    assert score_sample(render(two, FRAMES, 64, 64), one.truth(FRAMES, 64, 64))["count_error"] == 1
    assert score_sample(render(one, FRAMES, 64, 64), two.truth(FRAMES, 64, 64))["count_error"] == 1


def test_blank_video_has_no_colour_direction_or_track():
    video = background_video("grey", FRAMES, 64, 64)
    scene = BASES[("upwards", 1)]
    assert dominant_color(video) is None
    assert motion_direction(centroid_track(video, scene.color)) == "none"
    scores = score_sample(video, scene.truth(FRAMES, 64, 64))
    assert scores == {"color_correct": 0, "count_error": 1, "direction_correct": 0, "trajectory_error": 1.0}


def test_object_that_stays_put_is_static():
    scene = dataclasses.replace(BASES[("leftwards", 1)], end=BASES[("leftwards", 1)].start)
    assert motion_direction(centroid_track(render(scene, FRAMES, 64, 64), scene.color)) == "static"


#################################################################################
#                              Analytic values                                  #
#################################################################################


def test_centroid_of_a_known_rectangle_is_exact():
    video = paint(np.zeros((2, 10, 20, 3), np.uint8), "red", 0, slice(2, 6), slice(3, 9))
    expected = np.array([[4.0 / 10, 6.0 / 20], [np.nan, np.nan]])  # pixel centres 2.5..5.5 and 3.5..8.5
    np.testing.assert_allclose(centroid_track(video, "red"), expected)
    np.testing.assert_allclose(centroid_track(torch.from_numpy(video).permute(3, 0, 1, 2), "red"), expected)


def test_components_below_min_area_are_not_counted():
    video = background_video("black", 1, 128, 128)  # min_area 0.002 -> 32.8 pixels
    for k in range(4):
        paint(video, "white", 0, slice(10 + 30 * k, 15 + 30 * k), slice(20, 25))  # 5x5 = 25 pixels each
    assert count_objects(video, "white") == 0
    assert count_objects(video, "white", min_area=0.001) == 4
    assert dominant_color(video) == "white"  # 100 pixels over the clip
    assert dominant_color(video, min_area=0.01) is None


def test_one_pixel_sliver_is_not_an_object():
    video = paint(background_video("grey", 1, 64, 64), "green", 0, slice(20, 40), slice(10, 30))
    paint(video, "green", 0, slice(18, 19), slice(10, 30))  # the line a yuv420 edge detaches, one row apart
    assert count_objects(video, "green", min_area=0.0) == 1


def test_objects_touching_at_a_corner_are_one_component():
    video = paint(background_video("black", 1, 64, 64), "blue", 0, slice(10, 20), slice(10, 20))
    paint(video, "blue", 0, slice(20, 30), slice(20, 30))
    assert count_objects(video, "blue") == 1
    paint(video, "blue", 0, slice(40, 50), slice(40, 50))
    assert count_objects(video, "blue") == 2


def test_count_is_the_lower_median_over_frames():
    video = background_video("brown", 4, 64, 64)
    for f, n in enumerate([1, 3, 2, 3]):
        for k in range(n):
            paint(video, "yellow", f, slice(5 + 20 * k, 15 + 20 * k), slice(5, 15))
    assert count_objects(video, "yellow") == 2
    assert count_objects(video[:3], "yellow") == 2
    assert count_objects(video[:2], "yellow") == 1


@pytest.mark.parametrize("word", list(DIRECTIONS))
def test_direction_follows_the_larger_axis_of_the_displacement(word):
    dy, dx = DIRECTIONS[word]
    track = np.full((5, 2), np.nan)
    track[1], track[3] = (0.5, 0.5), (0.5 + 0.3 * dy + 0.1 * dx, 0.5 + 0.3 * dx + 0.1 * dy)
    assert motion_direction(track) == word
    assert motion_direction(track, min_shift=0.31) == "static"
    assert motion_direction(track[:3]) == "none"


def test_trajectory_error_is_the_mean_distance_to_the_mean_truth_centroid():
    truth = dataclasses.replace(
        BASES[("rightwards", 2)].truth(3, 64, 64), centroids=[[[0.2, 0.1], [0.4, 0.3]]] * 3
    )  # mean (0.3, 0.2) in every frame
    track = np.array([[0.3, 0.2], [0.33, 0.24], [np.nan, np.nan]])
    assert trajectory_error(track, truth) == pytest.approx((0.0 + 0.05 + 1.0) / 3)
    with pytest.raises(ValueError, match=r"track of shape \(2, 2\)"):
        trajectory_error(track[:2], truth)


def test_score_samples_averages_and_counts():
    scene = BASES[("upwards", 1)]
    good = render(scene, FRAMES, 64, 64)
    bad = render(dataclasses.replace(scene, color="white" if scene.color != "white" else "red"), FRAMES, 64, 64)
    truth = scene.truth(FRAMES, 64, 64)
    scores = score_samples([good, torch.from_numpy(bad)], [truth, truth])
    assert scores["n"] == 2 and scores["color_correct"] == 0.5 and scores["direction_correct"] == 0.5
    with pytest.raises(ValueError, match="1 videos and 2 truths"):
        score_samples([good], [truth, truth])


def test_bad_inputs_are_rejected_with_the_fix():
    with pytest.raises(ValueError, match=r"shape \(5, 5, 3\)"):
        as_frames(np.zeros((5, 5, 3), np.uint8))
    with pytest.raises(ValueError, match="dtype float32 is not uint8"):
        as_frames(torch.zeros(2, 4, 4, 3))
    with pytest.raises(ValueError, match="color='cyan'"):
        color_mask(np.zeros((1, 4, 4, 3), np.uint8), "cyan")
