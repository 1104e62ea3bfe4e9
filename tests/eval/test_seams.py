"""Window-seam score: boundaries agree with the attention's window layout, seams raise the score, constants don't."""

import numpy as np
import pytest
import torch

from ultragen.data.procedural import random_scene, render
from ultragen.eval import seam_boundaries, seam_score, window_boundaries
from ultragen.models.attention.base import VideoGrid
from ultragen.models.attention.options import PlaneFit
from ultragen.models.attention.window import WindowLayout


def gradient_video(frames: int = 3, height: int = 64, width: int = 64) -> np.ndarray:
    """(F, H, W, 3) float64 smooth ramps in y, x, frame and channel."""
    f, y, x, c = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in (frames, height, width, 3)), indexing="ij")
    return 40 + 0.5 * y + 0.3 * x + 2 * f + 5 * c


def blocky(video: np.ndarray, size: int) -> np.ndarray:
    """Adds 40 to every other size x size block (checkerboard), the artefact of independent windows."""
    _, h, w, _ = video.shape
    checker = ((np.arange(h)[:, None] // size + np.arange(w)[None, :] // size) % 2).astype(video.dtype)
    return video + 40 * checker[None, :, :, None]


#################################################################################
#                                   Boundaries                                  #
#################################################################################


@pytest.mark.parametrize(
    "length, windows, pad, expected",
    [
        (8, 4, "replicate", [2, 4, 6]),
        (68, 4, "error", [17, 34, 51]),
        (10, 4, "replicate", [3, 6, 9]),  # padded to 12
        (5, 4, "replicate", [2, 4]),  # padded to 8: the last window is all padding
        (7, 1, "error", []),
        (10, 4, "interpolate", [3, 5, 8]),  # resized to 8: window edges 2, 4, 6 map to 2.5, 5, 7.5
    ],
)
def test_window_boundaries_by_hand(length, windows, pad, expected):
    assert window_boundaries(length, windows, pad) == expected


@pytest.mark.parametrize("h, w, nh, nw", [(8, 12, 4, 3), (10, 7, 4, 3), (5, 9, 4, 2), (17, 30, 4, 4)])
def test_window_boundaries_match_the_attention_layout(h, w, nh, nw):
    """A boundary is where the window of a token (from `WindowLayout`, replicate padding) changes."""
    fit = PlaneFit.plan(VideoGrid(1, h, w), (nh, nw), "replicate")
    layout = WindowLayout(fit, (1, nh, nw), strided=False, shifted=False, device="cpu")
    window_of_position = torch.cat([torch.arange(n).repeat_interleave(k) + sum(m for m, _ in layout.groups[:i])
                                    for i, (n, k) in enumerate(layout.groups)])
    window = window_of_position[layout.inverse].view(h, w)
    rows = [r for r in range(1, h) if (window[r] != window[r - 1]).any()]
    cols = [c for c in range(1, w) if (window[:, c] != window[:, c - 1]).any()]
    assert (window_boundaries(h, nh), window_boundaries(w, nw)) == (rows, cols)


def test_error_pad_raises_on_a_non_divisible_axis():
    with pytest.raises(ValueError, match="not divisible"):
        window_boundaries(10, 4, "error")
    with pytest.raises(ValueError, match="pad='zeros'"):
        window_boundaries(8, 4, "zeros")


def test_seam_boundaries_unite_the_schedule_in_pixels():
    rows, cols = seam_boundaries(8, 12, [[4, 4], [3, 3]], pixels_per_token=(16, 8))
    assert rows == [32, 48, 64, 96]  # tokens 2, 4, 6 (4 windows) and 3, 6 (3 windows on the padded 9)
    assert cols == [24, 32, 48, 64, 72]  # tokens 3, 6, 9 and 4, 8
    with pytest.raises(ValueError, match=r"entry \[4\] must be 2"):
        seam_boundaries(8, 12, [[4]], pixels_per_token=(16, 8))


#################################################################################
#                                     Score                                     #
#################################################################################


def test_seams_raise_the_score_on_a_gradient():
    rows, cols = seam_boundaries(4, 4, [[4, 4]], pixels_per_token=(16, 16))
    video = gradient_video()
    assert seam_score(video, rows, cols) == pytest.approx(1.0, rel=1e-5)  # eps
    assert seam_score(blocky(video, 16), rows, cols) > 50


def test_seams_raise_the_score_on_a_procedural_clip():
    scene = random_scene(3, 0, (2,))
    video = render(scene, 9, 64, 64).astype(np.int16)
    rows, cols = seam_boundaries(8, 8, [[4, 4]], pixels_per_token=(8, 8))
    clean = seam_score(video, rows, cols)
    assert 0.3 < clean < 3
    assert seam_score(blocky(video, 16), rows, cols) > 5 * clean


def test_score_is_invariant_to_a_constant_and_the_layout():
    video = render(random_scene(5, 0, (3,)), 9, 48, 80)
    rows, cols = [16, 32], [20, 40, 60]
    score = seam_score(video, rows, cols)
    assert seam_score(video.astype(np.float64) + 17.25, rows, cols) == pytest.approx(score, rel=1e-12)
    assert seam_score(torch.from_numpy(video).permute(3, 0, 1, 2), rows, cols) == score


def test_a_boundary_is_the_step_between_pixel_b_minus_1_and_b():
    step = gradient_video()
    step[:, :, 24:] -= 30  # columns 23 | 24, a step down: magnitudes count
    assert seam_score(step, [], [24]) > 50
    assert seam_score(step, [], [23]) < 1 and seam_score(step, [], [25]) < 1
    assert seam_score(step, [24], []) < 1
    rows = gradient_video()
    rows[:, 40:] += 30  # rows 39 | 40
    assert seam_score(rows, [40], []) > 50 and seam_score(rows, [], [40]) < 1


def test_bad_boundaries_are_rejected():
    video = gradient_video(1, 8, 8)
    with pytest.raises(ValueError, match=r"cols=\[8\] must lie in \[1, 7\]"):
        seam_score(video, [4], [8])
    with pytest.raises(ValueError, match="no boundary"):
        seam_score(video, [], [])


def test_rows_and_columns_are_pooled():
    """Column steps of 1 with an extra 7 at column 4, no row steps: boundary mean 4 (8 and 0), interior 0.5."""
    x = np.arange(8, dtype=np.float64) + 7 * (np.arange(8) >= 4)
    video = np.broadcast_to(x[None, None, :, None], (1, 8, 8, 3))
    assert seam_score(video, [4], [4]) == pytest.approx(8.0, rel=1e-5)


def test_token_edges_are_the_reference_when_tokens_are_decoded_separately():
    video = blocky(gradient_video(), 8)  # a step at every 8-pixel token edge (a patch-wise decoder), none elsewhere
    rows = cols = [16, 32]  # window boundaries, also token edges
    assert seam_score(video, rows, cols) > 5  # against every position, the patch grid looks like seams
    assert seam_score(video, rows, cols, token_pixels=(8, 8)) == pytest.approx(1.0, rel=1e-6)
    video[:, :, 16:] += 100  # a window-boundary step on top of the patch grid
    assert seam_score(video, rows, cols, token_pixels=(8, 8)) > 1.2
    with pytest.raises(ValueError, match="multiples of token_pixels"):
        seam_score(video, [], [12], token_pixels=(8, 8))
