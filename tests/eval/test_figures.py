"""Figures: the prompts-by-checkpoint grid puts each step's frame of each prompt in its own cell."""

import numpy as np
import pytest
import torch

from ultragen.eval.figures import CAPTION_HEIGHT, middle_frames, progress_grid


def test_middle_frames_pick_the_middle_of_each_video():
    video = torch.arange(5, dtype=torch.uint8).view(1, 5, 1, 1).expand(3, 5, 4, 6)  # frame f has value f
    (frame,) = middle_frames([video])
    assert frame.shape == (4, 6, 3) and (frame == 2).all()


def test_progress_grid_has_a_column_per_step_and_a_row_per_prompt():
    size, scale = 8, 2
    history = [(step, [np.full((size, size, 3), 10 * step + prompt, np.uint8) for prompt in range(3)])
               for step in (1, 2)]
    grid = np.asarray(progress_grid(history, scale=scale))
    cell = (size + 2) * scale  # frame plus its 2-pixel white margin, magnified
    assert grid.shape == (CAPTION_HEIGHT + 3 * cell, 2 * cell, 3)
    for column, (step, _) in enumerate(history):
        for row in range(3):
            y, x = CAPTION_HEIGHT + row * cell + size, column * cell + size  # inside the cell's frame
            assert (grid[y, x] == 10 * step + row).all()
    with pytest.raises(ValueError, match="one frame per prompt"):
        progress_grid([(1, history[0][1]), (2, history[1][1][:2])])
